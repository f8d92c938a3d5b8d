"""The non-finite guard on a DP2 run: a NaN in one micro-batch of one rank stops (or skips on) every rank."""

from __future__ import annotations

import json
import math
import re

import pytest

from tests.harness import training as T
from tests.harness.worlds import each_case, run_world

pytestmark = pytest.mark.multiprocess

MICRO = 2  # micro-batches per step and rank: global batch 4 over DP2


@pytest.fixture(scope="module")
def runs(tmp_path_factory, quickstart_shards):
    """Both 3-step runs in one DP2 world: "skip" with NaN at step 2, micro-batch 0 of rank 1 (--on-nonfinite
    skip), then "stop" with NaN at step 3, micro-batch 1 of rank 1 (stop)."""
    root = tmp_path_factory.mktemp("guard")
    images, texts = quickstart_shards
    cases = [(images, texts, str(root / "skip"), 3, "skip", MICRO, str(root / "skip.json")),
             (images, texts, str(root / "stop"), 3, "stop", 2 * MICRO + 1, str(root / "stop.json"))]
    run_world(each_case, 2, T.run_nan_job, cases)
    return root


def _outcomes(out) -> list[dict]:
    return [json.loads(open(f"{out}.{rank}").read()) for rank in range(2)]


def test_a_nan_in_one_micro_batch_stops_every_rank_naming_its_data(runs):
    from megatron_solo.checkpoint.layout import latest_iteration
    from megatron_solo.checkpoint.train_state import read_train_state

    save, out = runs / "stop", str(runs / "stop.json")  # NaN at step 3, micro-batch 1
    errors = [o["error"] for o in _outcomes(out)]
    assert errors[0] == errors[1] and errors[0] is not None
    assert errors[0].startswith("iteration 3: not finite:") and "rank 1's micro-batch 1" in errors[0]
    # 8 packs read before step 3; rank 1's micro-batch 1 is pack 8 + 1 x 2 + 1 = 11, named by source and key
    assert re.search(r"data: pack 11 \[[^\]]*(imagenet|text):\d{10}[^\]]*\]$", errors[0]), errors[0]
    assert latest_iteration(save) == 2 and not (save / "iter_0000003").exists()
    assert read_train_state(save / "iter_0000002").skipped_steps == 0


def test_skip_leaves_the_step_without_its_update_and_counts_it(runs):
    from megatron_solo.checkpoint.train_state import read_train_state

    save, out = runs / "skip", str(runs / "skip.json")  # NaN at step 2, micro-batch 0
    first = _outcomes(out)[0]
    assert first["error"] is None and first["iteration"] == 3
    assert math.isnan(first["losses"][1]) and all(math.isfinite(v) for v in first["losses"][::2])
    assert read_train_state(save / "iter_0000003").skipped_steps == 1
