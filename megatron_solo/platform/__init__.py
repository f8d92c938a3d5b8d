"""The device world: process groups, megatron-core parallel state, CPU emulation of CUDA.

The names below are imported on first use, so that a helper process that needs only
:mod:`megatron_solo.platform.processes` starts without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_OWNERS = {
    "current_device": "distributed",
    "free_port": "distributed",
    "init_distributed": "distributed",
    "init_parallel": "distributed",
    "ranks_with": "distributed",
    "resolve_sequence_parallel": "distributed",
    "teardown": "distributed",
    "uses_cuda": "distributed",
    "spawn": "launch",
}

__all__ = sorted(_OWNERS)


def __getattr__(name: str) -> Any:
    if name not in _OWNERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_OWNERS[name]}"), name)
