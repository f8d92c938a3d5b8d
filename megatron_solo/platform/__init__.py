"""The device world: process groups, megatron-core parallel state, CPU emulation of CUDA."""

from megatron_solo.platform.distributed import (
    current_device,
    free_port,
    init_distributed,
    init_parallel,
    teardown,
    uses_cuda,
)
from megatron_solo.platform.launch import spawn

__all__ = [
    "current_device",
    "free_port",
    "init_distributed",
    "init_parallel",
    "spawn",
    "teardown",
    "uses_cuda",
]
