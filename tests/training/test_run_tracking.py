"""A real DP2 run, stopped and resumed, as a user watches it: W&B and tensorboard, a profile, a slow rank, the curve."""

from __future__ import annotations

import json
import re

import pytest

from megatron_solo.training.curve import CURVE_FILE, read_scalars
from megatron_solo.training.profiling import PROFILE_SUBDIR
from megatron_solo.training.progress import RANK_TIME_TAGS
from tests.harness.tracked_run import PROFILE_RANK_MISSING, SLOW_RANK, SLOW_SECONDS, tracked_job
from tests.harness.wandb_files import offline_runs
from tests.harness.worlds import run_world

pytestmark = pytest.mark.multiprocess
pytest.importorskip("wandb")

STEPS = 3  # attempt 1 stops after step 2, attempt 2 resumes for step 3 (profiled)


@pytest.fixture(scope="module")
def run(tmp_path_factory, quickstart_shards):
    """Both attempts' outputs, their stdout, and the folders they wrote."""
    root = tmp_path_factory.mktemp("tracked")
    images, texts = quickstart_shards
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    try:
        run_world(tracked_job, 2, images, texts, str(root), STEPS, 2)
    finally:
        mp.undo()
    read = lambda name: json.loads((root / f"{name}.json").read_text())  # noqa: E731
    return {"root": root, "first": read("attempt1"), "second": read("attempt2")}


def test_wandb_holds_the_loss_series_of_both_attempts_in_one_run(run):
    first, second = offline_runs(run["root"] / "tb")
    assert second.run_id == first.run_id and first.name == "tracked"
    assert first.config["train"]["wandb_project"] == "solo-test"  # the job's settings beside the run
    losses = first.history["train/loss"] + second.history["train/loss"]
    assert [s for s, _ in losses] == [1, 2, 3]
    assert [v for _, v in losses] == pytest.approx(run["first"]["losses"] + run["second"]["losses"], rel=1e-6)
    board = read_scalars(run["root"] / "tb", ("train/loss",))["train/loss"]
    assert [v for _, v in board] == pytest.approx([v for _, v in losses], rel=1e-6)


def test_the_slow_rank_stands_out(run):
    times = read_scalars(run["root"] / "tb", tuple(RANK_TIME_TAGS.values()))
    low, high = times[RANK_TIME_TAGS["min"]], times[RANK_TIME_TAGS["max"]]
    assert [s for s, _ in high] == [1, 2, 3]
    # two micro-batches per rank and step: the slow rank's own part is 2 x SLOW_SECONDS longer; the
    # whole step (which ends together on both ranks) would show no difference at all
    assert high[1][1] - low[1][1] >= 2 * SLOW_SECONDS * 0.75, (low, high)  # step 2: steady and not profiled


def test_the_rate_line_names_the_slowest_rank(run):
    lines = [line for n in (1, 2) for line in (run["root"] / f"attempt{n}.rank0.stdout").read_text().splitlines()
             if line.startswith("step ")]
    assert len(lines) == STEPS
    spreads = [re.search(r"\| ranks min/median/max ([\d.]+)/([\d.]+)/([\d.]+) s \(slowest: dp rank (\d)\)$", line)
               for line in lines]
    assert all(spreads), lines
    # step 2 is steady: an attempt's first step also starts the data workers (and step 3 is profiled on rank 0)
    low, _, high, slowest = spreads[1].groups()
    assert int(slowest) == SLOW_RANK and float(high) - float(low) >= 2 * SLOW_SECONDS * 0.75, lines[1]


def test_the_profile_names_our_modules_and_the_curve_is_drawn(run):
    (trace,) = (run["root"] / "tb" / PROFILE_SUBDIR).glob("rank0.*.pt.trace.json")
    names = {e.get("name", "") for e in json.loads(trace.read_text())["traceEvents"]}
    assert any(re.search(r"megatron_solo/model/\w+\.py\(\d+\): forward", n) for n in names)
    assert any("megatron_solo/training/step.py" in n for n in names)
    assert not list((run["root"] / "tb" / PROFILE_SUBDIR).glob("rank1.*"))  # --profile-ranks: rank 0 only
    warned = f"warning: --profile-ranks {PROFILE_RANK_MISSING}: no such rank in a run of 2 processes"
    assert warned in (run["root"] / "attempt1.rank0.stderr").read_text()
    assert (run["root"] / "tb" / CURVE_FILE).stat().st_size > 0
