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
