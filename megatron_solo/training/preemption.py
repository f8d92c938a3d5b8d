"""Catch the scheduler's preemption signal so the loop can checkpoint before it is killed.

Slurm sends SIGTERM (or the signal named by ``--signal``, often SIGUSR1) ahead of the
kill. The handler only sets a flag; the loop checks it after each step, agrees on it
across ranks, saves and exits.
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist


class PreemptionFlag:
    """Set by SIGTERM/SIGUSR1; :meth:`agreed` is True on every rank once any rank got one."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1)) -> None:
        self.received = False
        self._previous = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

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
