"""--profile-steps A:B: a torch.profiler trace of those steps, and on a GPU a CUDA memory snapshot of them.

The trace goes to TENSORBOARD_DIR/profile as ``rank<R>.<time>.pt.trace.json``: tensorboard's profiler
plugin shows it as the run "profile", chrome://tracing and Perfetto open the file itself. Python stacks
are recorded, so the events name our modules (megatron_solo/model/...). The memory snapshot,
``rank<R>_memory_steps_<A>-<B>.pickle`` beside it, opens in pytorch.org/memory_viz.

Writing a trace of a large model takes a while, and the ranks not recording would meanwhile wait in the
next step's collectives, which fail after the process group's timeout. So at the end of the window every
rank meets the recording ones through the job's key-value store, not in a collective: the others wait
there until the files are written, at most ``WRITE_BOUND`` (then the run stops with one line naming the
rank). The memory snapshot keeps Python frames only: symbolizing every C++ frame is what takes minutes.
"""

from __future__ import annotations

import datetime
import itertools
import time
from pathlib import Path

from megatron_solo.config.train import TrainConfig

PROFILE_SUBDIR = "profile"
MEMORY_HISTORY_ENTRIES = 100_000  # allocation events kept for the snapshot (torch's own suggestion)
WRITE_BOUND = datetime.timedelta(minutes=30)  # how long the other ranks wait for the profile's files
_WINDOWS = itertools.count()  # profilers made in this process, the same count on every rank: keys of their own


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
    """Records steps ``first..last`` (counted from 1, both included) on this rank when it is one of ``ranks``.

    Every rank of the job makes one (``world_size`` ranks; ``train_steps`` ends a window that would run past
    it), so that all of them meet when the window ends.
    """

    def __init__(self, steps: tuple[int, int] | None, ranks: list[int], tensorboard_dir: str | None,
                 rank: int, world_size: int = 1, train_steps: int | None = None) -> None:
        self.window = None if steps is None else (steps[0], min(steps[1], train_steps or steps[1]))
        self.recorders = [r for r in ranks if r < world_size] if steps is not None else []
        self.steps = self.window if rank in self.recorders else None
        self.rank, self.world_size = rank, world_size
        self.folder = Path(tensorboard_dir or ".") / PROFILE_SUBDIR
        self.profiler = None
        self.first = self.last = 0  # the first and the latest step recorded
        self.memory = False
        self.written: list[Path] = []  # what the finished window wrote
        self.key = f"solo_profile/{next(_WINDOWS)}"

    @classmethod
    def for_job(cls, train: TrainConfig) -> StepProfiler:
        """The profiler ``train`` asks for, on this process's global rank."""
        import torch

        return cls(train.profile_steps, train.profile_ranks, train.tensorboard_dir, torch.distributed.get_rank(),
                   torch.distributed.get_world_size(), train.train_steps)

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
            torch.cuda.memory._record_memory_history(max_entries=MEMORY_HISTORY_ENTRIES, stacks="python")
        self.profiler = profile(activities=activities, record_shapes=True, with_stack=True)
        self.profiler.start()
        self.first = step

    def after_step(self, step: int) -> None:
        """Stop and write when ``step`` (the step just run) closes the window; every rank waits for the files."""
        if self.profiler is not None:
            self.last = step
            if step >= self.steps[1]:
                self._finish()
        if self.window is not None and step == self.window[1] and self.world_size > 1:
            self._meet()

    def close(self) -> None:
        """Write what was recorded when the run ends (or stops) inside the window."""
        if self.profiler is not None:
            self._finish()

    def _meet(self) -> None:
        """Recorders say they wrote; every rank waits for all of them (no collective: no timeout of the group)."""
        import torch.distributed as dist

        store = dist.distributed_c10d._get_default_store()
        if self.rank in self.recorders:
            store.set(f"{self.key}/{self.rank}", "written")
        waiting = [f"{self.key}/{r}" for r in self.recorders]
        try:
            store.wait(waiting, WRITE_BOUND)
        except Exception as err:  # the store's timeout: a recorder is stuck writing or gone
            missing = [r for r in self.recorders if not store.check([f"{self.key}/{r}"])]
            raise RuntimeError(f"--profile-steps: rank(s) {missing} did not write their profile within "
                               f"{WRITE_BOUND.total_seconds() / 60:g} minutes ({type(err).__name__})") from err

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
