"""--profile-steps A:B: a torch.profiler trace of those steps, and on a GPU a CUDA memory snapshot of them.

The trace goes to TENSORBOARD_DIR/profile as ``rank<R>.<time>.pt.trace.json``: tensorboard's profiler
plugin shows it as the run "profile", chrome://tracing and Perfetto open the file itself. Python stacks
are recorded, so the events name our modules (megatron_solo/model/...). The memory snapshot,
``rank<R>_memory_steps_<A>-<B>.pickle`` beside it, opens in pytorch.org/memory_viz.
"""

from __future__ import annotations

import time
from pathlib import Path

from megatron_solo.config.train import TrainConfig

PROFILE_SUBDIR = "profile"
MEMORY_HISTORY_ENTRIES = 100_000  # allocation events kept for the snapshot (torch's own suggestion)


def profile_warning(train: TrainConfig, world_size: int, iteration: int) -> str | None:
    """One line when ``--profile-steps`` records less than asked in this run (world size, resumed ``iteration``)."""
    if train.profile_steps is None:
        return None
    first, last = train.profile_steps
    missing = [r for r in train.profile_ranks if r >= world_size]
    problems = []
    if missing:
        left = "nothing is profiled" if len(missing) == len(train.profile_ranks) else "they record nothing"
        problems.append(f"--profile-ranks {', '.join(map(str, missing))}: no such rank in a run of {world_size} "
                        f"process{'es' * (world_size > 1)} ({left})")
    if last <= iteration:
        problems.append(f"--profile-steps {first}:{last} ended before this run resumes at step {iteration + 1}: "
                        "nothing is profiled")
    elif first <= iteration:
        problems.append(f"--profile-steps {first}:{last}: steps {first} to {iteration} ran before this run resumed; "
                        f"steps {iteration + 1} to {last} are profiled")
    return "warning: " + "; ".join(problems) if problems else None


class StepProfiler:
    """Records steps ``first..last`` (counted from 1, both included) on this rank when it is one of ``ranks``."""

    def __init__(self, steps: tuple[int, int] | None, ranks: list[int], tensorboard_dir: str | None,
                 rank: int) -> None:
        self.steps = steps if steps is not None and rank in ranks else None
        self.rank = rank
        self.folder = Path(tensorboard_dir or ".") / PROFILE_SUBDIR
        self.profiler = None
        self.first = self.last = 0  # the first and the latest step recorded
        self.memory = False
        self.written: list[Path] = []  # what the finished window wrote

    @classmethod
    def for_job(cls, train: TrainConfig) -> StepProfiler:
        """The profiler ``train`` asks for, on this process's global rank."""
        import torch

        return cls(train.profile_steps, train.profile_ranks, train.tensorboard_dir, torch.distributed.get_rank())

    def before_step(self, step: int) -> None:
        """Start recording when ``step`` (the step about to run) opens the window."""
        if self.steps is None or self.profiler is not None or not self.steps[0] <= step <= self.steps[1]:
            return
        import torch
        from torch.profiler import ProfilerActivity, profile

        from megatron_solo.platform import uses_cuda

        self.folder.mkdir(parents=True, exist_ok=True)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if uses_cuda() else [])
        self.memory = uses_cuda()
        if self.memory:
            torch.cuda.memory._record_memory_history(max_entries=MEMORY_HISTORY_ENTRIES)
        self.profiler = profile(activities=activities, record_shapes=True, with_stack=True)
        self.profiler.start()
        self.first = step

    def after_step(self, step: int) -> None:
        """Stop and write when ``step`` (the step just run) closes the window."""
        if self.profiler is None:
            return
        self.last = step
        if step >= self.steps[1]:
            self._finish()

    def close(self) -> None:
        """Write what was recorded when the run ends (or stops) inside the window."""
        if self.profiler is not None:
            self._finish()

    def _finish(self) -> None:
        import torch

        self.profiler.stop()
        trace = self.folder / f"rank{self.rank}.{time.time_ns() // 1_000_000}.pt.trace.json"
        self.profiler.export_chrome_trace(str(trace))
        self.written.append(trace)
        self.profiler = None
        if self.memory:
            snapshot = self.folder / f"rank{self.rank}_memory_steps_{self.first}-{self.last}.pickle"
            torch.cuda.memory._dump_snapshot(str(snapshot))
            torch.cuda.memory._record_memory_history(enabled=None)
            self.written.append(snapshot)
        self.steps = None  # one window per run
