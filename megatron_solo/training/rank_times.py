"""Slow ranks made visible: each data-parallel rank's own step time, gathered in one small all-gather.

A rank's own time is the part of the step it spends alone: reading its micro-batches, forward and
backward, up to the moment it enters the gradient reduction. The whole step's wall time is no use for
this: the reduction makes every rank wait for the slowest, so all ranks' steps end together and take
equally long. On a GPU the clock is read after a device synchronisation, so queued kernels count.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from megatron_solo.platform import current_device, uses_cuda


@dataclass(frozen=True)
class RankTimes:
    """Min / median / max of one step's own time over the data-parallel ranks, and the slowest rank."""

    min: float
    median: float
    max: float
    slowest: int  # data-parallel rank of the max
    count: int  # ranks compared


class OwnTimeClock:
    """A rank's own part of the step: from :meth:`start` to the first :meth:`mark` (``train_step``'s ``before_grad_sync``)."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.reached: float | None = None

    def start(self) -> None:
        """The step begins (before its micro-batches are read)."""
        self.started, self.reached = time.perf_counter(), None

    def mark(self) -> None:
        """The rank enters the gradient reduction: its own part of the step ends (later calls keep the first)."""
        if self.reached is None:
            self.reached = _synchronized_now()

    def seconds(self) -> float:
        """The own part of the step that started last (the whole step so far, when no reduction ran)."""
        if self.started is None:
            raise RuntimeError("OwnTimeClock.seconds before start")
        end = self.reached if self.reached is not None else _synchronized_now()
        return end - self.started


def _synchronized_now() -> float:
    """perf_counter once the device has finished the work queued so far."""
    if uses_cuda():
        torch.cuda.synchronize()
    return time.perf_counter()


def gather_rank_times(seconds: float, group: Any = None) -> RankTimes:
    """RankTimes of ``seconds`` over the ranks of ``group`` (default: megatron-core's data-parallel group).

    A collective: every rank of the group calls it. One float per rank crosses the wire.
    """
    if group is None:
        from megatron.core import parallel_state as ps

        group = ps.get_data_parallel_group()
    size = torch.distributed.get_world_size(group)
    mine = torch.tensor([seconds], dtype=torch.float64, device=current_device())
    every = torch.empty(size, dtype=torch.float64, device=mine.device)
    torch.distributed.all_gather_into_tensor(every, mine, group=group)
    values = every.tolist()
    return RankTimes(min(values), statistics.median(values), max(values), values.index(max(values)), size)
