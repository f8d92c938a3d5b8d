"""Shared pytest settings: quiet megatron-core's start-up warnings, keep threads bounded."""

import os
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "2")
warnings.filterwarnings("ignore", message=".*Transformer Engine.*")
warnings.filterwarnings("ignore", message=".*Apex.*")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def world1():
    """A one-process gloo world inside the pytest process (CPU emulation on)."""
    from megatron_solo.platform.distributed import init_distributed

    init_distributed()
    yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the ``gpu``-marked checks where they cannot run, saying why (tests/gpu/checks.py)."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    from tests.gpu.checks import cuda_missing

    why = cuda_missing()
    for item in gpu if why else []:
        item.add_marker(pytest.mark.skip(reason=why))
