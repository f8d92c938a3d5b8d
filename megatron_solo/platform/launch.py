"""Start a world of processes on this machine (tests, the conversions, benchmarks).

On a cluster the launcher is srun (one task per GPU) or torchrun under srun (one per
node, with ``--signals-to-handle`` including SIGUSR1 so the preemption signal reaches the
workers): see examples/slurm/. This is their one-machine twin for code that must start
its own workers, e.g. a conversion tool or a pytest test.

Ranks are forked from a fork server that imported torch and megatron-core once (the first world a
process starts pays for it): a rank then starts in a fraction of a second instead of importing
them itself, seconds per rank. The server is a fresh process, not a fork of the caller, so it holds
no CUDA context, thread pool or process group. Each rank takes the caller's environment, working
folder, module path and standard output and error as they are at the call, as a spawned process would.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from multiprocessing import reduction
from typing import Any

import torch
import torch.multiprocessing as mp

# free_port lives in distributed.py (which needs it for one-process worlds) so the
# two modules import in one direction only; it stays importable from here.
from megatron_solo.platform.distributed import free_port, init_distributed, teardown

__all__ = ["free_port", "spawn"]

# Imported once by the fork server; "__main__" (run as __mp_main__, as spawn does) so workers a
# script defines can be found.
PRELOAD = ["__main__", "torch", "megatron.core", "megatron_solo.platform.distributed"]


class _CallerFd:
    """A file descriptor of the caller, handed to the rank by the fork server (its stdout or stderr)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self):
        return _received_fd, (reduction.DupFd(self.fd),)


def _received_fd(dup) -> int:
    return dup.detach()


def _caller_context() -> dict[str, Any]:
    """What a spawned process would have taken from its parent at this call."""
    return {"env": dict(os.environ), "cwd": os.getcwd(), "path": list(sys.path),
            "stdout": _CallerFd(1), "stderr": _CallerFd(2)}


def _take_caller_context(context: dict[str, Any]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(context["stdout"], 1)
    os.dup2(context["stderr"], 2)
    os.environ.clear()
    os.environ.update(context["env"])
    os.chdir(context["cwd"])
    sys.path[:] = context["path"]


def _worker(local_rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple,
            context: dict[str, Any]) -> None:
    _take_caller_context(context)
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
    mp.get_context("forkserver").set_forkserver_preload(PRELOAD)
    mp.start_processes(
        _worker,
        args=(world_size, free_port(), fn, args, _caller_context()),
        nprocs=world_size,
        join=True,
        start_method="forkserver",
    )
