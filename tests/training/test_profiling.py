"""--profile-steps A:B: a chrome trace of exactly those steps, on the ranks asked, named by Python frames."""

from __future__ import annotations

import datetime
import json
import time

import pytest
import torch
import torch.distributed as dist

from megatron_solo.config.train import TrainConfig, step_range
from megatron_solo.errors import UserInputError
from megatron_solo.training import profiling
from megatron_solo.training.profiling import PROFILE_SUBDIR, StepProfiler, profile_warning
from tests.harness.worlds import each_case, run_world


def _marked_work(step: int) -> None:
    with torch.profiler.record_function(f"work of step {step}"):
        torch.ones(64, 64) @ torch.ones(64, 64)


def _run(profiler: StepProfiler, steps: range) -> None:
    for step in steps:
        profiler.before_step(step)
        _marked_work(step)
        profiler.after_step(step)
    profiler.close()


def _names(trace) -> set[str]:
    return {e.get("name", "") for e in json.loads(trace.read_text())["traceEvents"]}


def test_the_trace_holds_the_window_and_nothing_else(tmp_path):
    profiler = StepProfiler((2, 3), [0], str(tmp_path), rank=0)
    _run(profiler, range(1, 6))
    (trace,) = profiler.written
    assert trace.parent == tmp_path / PROFILE_SUBDIR and trace.name.startswith("rank0.")
    assert trace.name.endswith(".pt.trace.json")
    names = _names(trace)
    assert {"work of step 2", "work of step 3"} <= names
    assert not {"work of step 1", "work of step 4", "work of step 5"} & names
    assert any("test_profiling.py" in n and "_marked_work" in n for n in names)  # Python frames recorded


def test_other_ranks_record_nothing_and_a_run_stopped_inside_the_window_still_writes(tmp_path):
    elsewhere = StepProfiler((1, 3), [0, 2], str(tmp_path), rank=1, world_size=3)
    _run(elsewhere, range(1, 3))  # inside the window (whose end would meet the other ranks)
    assert elsewhere.written == [] and not (tmp_path / PROFILE_SUBDIR).exists()
    stopped = StepProfiler((2, 9), [0, 2], str(tmp_path), rank=2, world_size=3)
    _run(stopped, range(1, 4))  # the run ends at step 3, inside the window
    (trace,) = stopped.written
    assert {"work of step 2", "work of step 3"} <= _names(trace)


def test_the_window_is_checked_where_it_is_given(tmp_path):
    assert step_range("5:8") == (5, 8)
    for bad in ("5", "a:b", "5-8", ":3"):
        with pytest.raises(UserInputError, match="expected A:B"):
            step_range(bad)
    with pytest.raises(UserInputError, match="1 <= A <= B"):
        TrainConfig(profile_steps=(4, 2), tensorboard_dir=str(tmp_path))
    with pytest.raises(UserInputError, match=r"starts after the last step \(train_steps 10\)"):
        TrainConfig(profile_steps=(11, 12), tensorboard_dir=str(tmp_path), train_steps=10)
    with pytest.raises(UserInputError, match="give tensorboard_dir"):
        TrainConfig(profile_steps=(1, 2))


def test_a_profile_that_records_less_than_asked_is_a_warning(tmp_path):
    train = TrainConfig(profile_steps=(2, 3), profile_ranks=[0, 3], tensorboard_dir=str(tmp_path), train_steps=10)
    assert profile_warning(train, world_size=4, iteration=0) is None
    assert profile_warning(train, world_size=1, iteration=0) == (
        "warning: --profile-ranks 3: no such rank in a run of 1 process (they record nothing)")
    only = TrainConfig(profile_steps=(2, 3), profile_ranks=[3], tensorboard_dir=str(tmp_path), train_steps=10)
    assert profile_warning(only, world_size=2, iteration=0).endswith("(nothing is profiled)")
    assert profile_warning(train, world_size=4, iteration=5) == (
        "warning: --profile-steps 2:3 ended before this run resumes at step 6: nothing is profiled")
    assert profile_warning(train, world_size=4, iteration=2) == (
        "warning: --profile-steps 2:3: steps 2 to 2 ran before this run resumed; steps 3 to 3 are profiled")
    assert profile_warning(TrainConfig(), world_size=1, iteration=0) is None


SLOW_WRITE = 2.0  # seconds rank 0 takes to write its profile: longer than the group's timeout below
GROUP_TIMEOUT = datetime.timedelta(seconds=1)


def _window_then_collective(folder: str, bound: float) -> None:
    """Rank 0 records steps 1-2 and writes slowly; then both ranks all-reduce on a group with a short timeout."""
    rank = dist.get_rank()
    group = dist.new_group(timeout=GROUP_TIMEOUT)
    profiling.WRITE_BOUND = datetime.timedelta(seconds=bound)
    finish = StepProfiler._finish
    StepProfiler._finish = lambda self: (time.sleep(SLOW_WRITE), finish(self))
    profiler = StepProfiler((1, 2), [0], folder, rank, world_size=2, train_steps=3)
    try:
        _run_window(profiler)
    except RuntimeError as err:
        assert rank == 1 and bound < SLOW_WRITE, err
        assert str(err).startswith("--profile-steps: rank(s) [0] did not write their profile within")
        return
    finally:
        StepProfiler._finish = finish
    assert rank == 0 or bound > SLOW_WRITE, "the rank waiting past the bound was not stopped"
    if bound < SLOW_WRITE:
        assert len(profiler.written) == 1
        return
    total = torch.ones(1)
    dist.all_reduce(total, group=group)  # no rank got here while another was still writing
    assert total.item() == 2 and len(profiler.written) == (rank == 0)


def _run_window(profiler: StepProfiler) -> None:
    for step in (1, 2):
        profiler.before_step(step)
        _marked_work(step)
        profiler.after_step(step)


@pytest.mark.multiprocess
def test_ranks_not_recording_wait_for_the_profile_outside_collectives_up_to_a_bound(tmp_path):
    """Writing takes longer than the group's timeout: the other rank waits at the store, then all-reduces;
    with a bound shorter than the write it stops with the recorder named."""
    run_world(each_case, 2, _window_then_collective, [(str(tmp_path / "a"), 60.0), (str(tmp_path / "b"), 0.5)])
