"""The job's signals and the helper processes a trainer starts.

A scheduler signals every process of a job, not only the trainers: Slurm's ``--signal=USR1@T``,
``scancel`` and a time limit reach each process of the step, and ``kill -- -PGID`` each process of the
group. The trainer decides what such a signal means (finish the step, save, stop); a helper it started
(a checkpoint writer, megatron-core's write-results queue, a data-loader worker) must live on until the
trainer no longer needs it, and end with the trainer. Forked helpers get that from the fork hook of
:mod:`megatron_solo.training.preemption`; a helper started with ``spawn`` runs no fork hook, so it is
started with the signals held back (:func:`job_signals_blocked`) and shields itself first thing
(:func:`shield_helper`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator

# The signals a scheduler sends to stop or warn a job: the trainer catches them, its helpers ignore them.
JOB_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

# prctl(2) option: the signal the kernel sends a process when its parent dies.
_PR_SET_PDEATHSIG = 1

# What this process, a helper of a trainer, does with each job signal (empty in a trainer).
_helper_dispositions: dict[int, signal.Handlers] = {}


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


@contextlib.contextmanager
def job_signals_blocked() -> Iterator[None]:
    """Hold the job's signals back from this thread while it starts helper processes.

    A process spawned meanwhile inherits the blocked signals, so a signal to the whole job cannot end it
    before it shields itself; this process gets any signal that arrived as soon as the block ends.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, JOB_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def set_helper_signals(dispositions: dict[int, signal.Handlers]) -> None:
    """In a helper process: handle the job's signals as ``dispositions`` says (SIG_IGN or SIG_DFL), from now on."""
    _helper_dispositions.clear()
    _helper_dispositions.update(dispositions)
    keep_helper_signals()


def keep_helper_signals(*_: object) -> None:
    """Put back what :func:`set_helper_signals` chose, after a library installed its own handlers.

    torch's DataLoader workers install a SIGTERM handler that ends the worker; the loader passes this
    function as its ``worker_init_fn``, which torch calls after that. A no-op outside a helper.
    """
    for sig, disposition in _helper_dispositions.items():
        signal.signal(sig, disposition)


def shield_helper(trainer: int) -> None:
    """In a helper process of ``trainer`` (its pid): ignore the job's signals and die with the trainer."""
    set_helper_signals(dict.fromkeys(JOB_SIGNALS, signal.SIG_IGN))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, JOB_SIGNALS)
    if set_parent_death_signal(signal.SIGKILL) and os.getppid() != trainer:
        os.kill(os.getpid(), signal.SIGKILL)  # the trainer died before prctl took effect
