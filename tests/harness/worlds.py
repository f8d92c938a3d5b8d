"""Run a worker in a world of processes: one rank runs in the pytest process, more are spawned.

A spawned world costs a Python start per rank (torch and megatron-core imports: seconds each); a
one-rank world needs none, so it runs in the pytest process's own gloo world (the ``world1`` fixture),
which stays up for the session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from megatron_solo.platform import init_distributed, spawn


def run_world(fn: Callable[..., Any], world_size: int, *args: Any) -> None:
    """``fn(*args)`` on ``world_size`` ranks; a one-rank world runs here, in this process."""
    if world_size > 1:
        spawn(fn, world_size, *args)
        return
    import torch.distributed as dist

    init_distributed()
    if dist.get_world_size() != 1:
        raise RuntimeError("run_world(fn, 1) needs this process's one-rank world, not a larger one")
    fn(*args)


def each_case(fn: Callable[..., Any], cases: list[tuple]) -> None:
    """Worker: ``fn(*case)`` for each of ``cases``, one after another, so one world runs them all."""
    for case in cases:
        fn(*case)
