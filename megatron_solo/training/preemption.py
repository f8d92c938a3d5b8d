"""Catch the scheduler's preemption signal so the loop can checkpoint before it is killed.

Slurm sends SIGTERM (or the signal named by ``--signal``, often SIGUSR1) ahead of the
kill. The handler only sets a flag; the loop checks it after each step, agrees on it
across ranks, saves and exits.

Processes forked while a flag is installed (megatron-core's checkpoint writers, which
``dist_checkpointing`` forks during a save, and data-loader workers) would inherit the handler
and outlive a trainer killed with SIGKILL as orphans holding shard files open. A fork hook
(:func:`_after_fork_in_child`) ties such a child's life to its parent's and has it ignore the
job's signals, which Slurm sends to every process of the job (see
:mod:`megatron_solo.platform.processes`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from megatron_solo.platform.processes import JOB_SIGNALS, set_helper_signals, set_parent_death_signal

# Flags whose handlers are installed in this process; the forking parent's pid and thread;
# whether this process is itself such a child (its own children must die with it too:
# megatron-core's async save forks a caller process that forks the writers).
_active: list[PreemptionFlag] = []
_fork: dict[str, int | bool | None] = {"parent": None, "main_thread": False, "descendant": False}


class PreemptionFlag:
    """Set by SIGTERM/SIGUSR1; :meth:`agreed` is True on every rank once any rank got one."""

    def __init__(self, signals: tuple[int, ...] = JOB_SIGNALS) -> None:
        self.received = False
        self._previous = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        _active.append(self)

    def _handle(self, signum, frame) -> None:
        self.received = True

    def agreed(self) -> bool:
        """All-reduce the flag so every rank stops at the same step."""
        from megatron_solo.platform.distributed import ranks_with

        return ranks_with(self.received) > 0

    def restore(self) -> None:
        """Put the previous handlers back, but keep a SIGUSR1 that arrives later from ending the process.

        Slurm's ``--signal`` warning can come after the last step, while a finished and saved run exits;
        its default action would end the process with status 138, which Slurm records as a failure.
        """
        for sig, handler in self._previous.items():
            if sig == signal.SIGUSR1 and handler == signal.SIG_DFL:
                handler = _after_the_run
            signal.signal(sig, handler)
        if self in _active:
            _active.remove(self)


def _after_the_run(signum: int, frame) -> None:
    print(f"note: {signal.Signals(signum).name} after the run ended: nothing left to stop", file=sys.stderr,
          flush=True)


def _before_fork() -> None:
    _fork["parent"] = os.getpid()
    _fork["main_thread"] = threading.current_thread() is threading.main_thread()


def _after_fork_in_child() -> None:
    """In a child forked while a flag is installed: die with the parent, ignore the job's signals."""
    if not _active and not _fork["descendant"]:
        return
    signals = {sig for flag in _active for sig in flag._previous}
    _active.clear()  # the child's copies of the flags are not the trainer's
    _fork["descendant"] = True
    # The kernel's parent-death signal fires when the forking *thread* exits, so it is
    # only safe (not premature) for children forked by the main thread.
    tied = bool(_fork["main_thread"]) and set_parent_death_signal(signal.SIGKILL)
    if tied and os.getppid() != _fork["parent"]:
        os.kill(os.getpid(), signal.SIGKILL)  # the parent died before prctl took effect
    # Slurm signals every process of the job, and the trainer answers by finishing its step and
    # saving: a loader worker or checkpoint writer ended by the signal would break that very
    # checkpoint. A child tied to its parent ends with it; one that is not keeps SIGTERM's default,
    # so that it can still be stopped. Its own children inherit what is set here.
    set_helper_signals({sig: signal.SIG_DFL if sig == signal.SIGTERM and not tied else signal.SIG_IGN
                        for sig in signals})


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
