"""Start a world of processes on this machine (tests, the quick start, benchmarks).

On a cluster the launcher is srun (one task per GPU) or torchrun under srun (one per
node, with ``--signals-to-handle`` including SIGUSR1 so the preemption signal reaches the
workers): see examples/slurm/. This is their one-machine twin for code that must start
its own workers, e.g. a pytest test.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp

# free_port lives in distributed.py (which needs it for one-process worlds) so the
# two modules import in one direction only; it stays importable from here.
from megatron_solo.platform.distributed import free_port, init_distributed, teardown

__all__ = ["free_port", "spawn"]


def _worker(local_rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    # Each worker gets one core's worth of threads so world sizes above the core
    # count do not oversubscribe the machine.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    init_distributed()
    try:
        fn(*args)
    finally:
        teardown()


def spawn(fn: Callable[..., Any], world_size: int, *args: Any) -> None:
    """Run ``fn(*args)`` in ``world_size`` processes joined in one process group.

    ``fn`` must be importable (module level). A failure in any worker raises here.
    """
    mp.start_processes(
        _worker,
        args=(world_size, free_port(), fn, args),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )
