"""Catch the scheduler's preemption signal so the loop can checkpoint before it is killed.

Slurm sends SIGTERM (or the signal named by ``--signal``, often SIGUSR1) ahead of the
kill. The handler only sets a flag; the loop checks it after each step, agrees on it
across ranks, saves and exits.

Processes forked while a flag is installed (megatron-core's checkpoint writers, which
``dist_checkpointing`` forks during a save) would inherit the handler and so ignore
SIGTERM, and outlive a trainer killed with SIGKILL as orphans holding shard files
open. A fork hook (:func:`_after_fork_in_child`) gives such a child back the default
SIGTERM and ties its life to its parent's.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

import torch
import torch.distributed as dist

# prctl(2) option: the signal the kernel sends a process when its parent dies.
_PR_SET_PDEATHSIG = 1

# Flags whose handlers are installed in this process; the forking parent's pid and thread;
# whether this process is itself such a child (its own children must die with it too:
# megatron-core's async save forks a caller process that forks the writers).
_active: list[PreemptionFlag] = []
_fork: dict[str, int | bool | None] = {"parent": None, "main_thread": False, "descendant": False}


class PreemptionFlag:
    """Set by SIGTERM/SIGUSR1; :meth:`agreed` is True on every rank once any rank got one."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1)) -> None:
        self.received = False
        self._previous = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        _active.append(self)

    def _handle(self, signum, frame) -> None:
        self.received = True

    def agreed(self) -> bool:
        """All-reduce the flag so every rank stops at the same step."""
        from megatron_solo.platform.distributed import current_device

        flag = torch.tensor([1.0 if self.received else 0.0], device=current_device())
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self in _active:
            _active.remove(self)


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def _before_fork() -> None:
    _fork["parent"] = os.getpid()
    _fork["main_thread"] = threading.current_thread() is threading.main_thread()


def _after_fork_in_child() -> None:
    """In a child forked while a flag is installed: default SIGTERM, ignore SIGUSR1, die with the parent."""
    if not _active and not _fork["descendant"]:
        return
    signals = {sig for flag in _active for sig in flag._previous}
    _active.clear()  # the child's copies of the flags are not the trainer's
    _fork["descendant"] = True
    for sig in signals:
        # SIGTERM must end the child again (it is how a user or Slurm stops a process).
        # SIGUSR1 is ignored rather than defaulted: Slurm delivers --signal to every
        # process of the step, and a data worker or checkpoint writer killed by it would
        # break the very checkpoint the signal asks for.
        signal.signal(sig, signal.SIG_IGN if sig == signal.SIGUSR1 else signal.SIG_DFL)
    # The kernel's parent-death signal fires when the forking *thread* exits, so it is
    # only safe (not premature) for children forked by the main thread.
    if _fork["main_thread"] and set_parent_death_signal(signal.SIGKILL) and os.getppid() != _fork["parent"]:
        os.kill(os.getpid(), signal.SIGKILL)  # the parent died before prctl took effect


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
