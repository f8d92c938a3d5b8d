"""Validation during training: finite losses at the right steps, the same at every layout, falling as it learns."""

from __future__ import annotations

import json
import math

import pytest

from tests.harness import training as T
from tests.harness.worlds import each_case, run_world

pytestmark = pytest.mark.multiprocess

STEPS = 4  # validated after steps 2 and 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory, world1, quickstart_shards):
    """The same job (eval data = the training blend) on one process, at DP2 and at PP2, from the same weights.

    The initial weights and the one-process run train here, in the pytest process; DP2 and PP2 share one
    two-process world.
    """
    root = tmp_path_factory.mktemp("validation")
    images, texts = quickstart_shards
    init = str(root / "init")
    run_world(T.run_eval_job, 1, images, texts, init, 1, 1, 1, None, str(root / "init.json"))
    run_world(T.run_eval_job, 1, images, texts, str(root / "single"), STEPS, 1, 1, init, str(root / "single.json"))
    run_world(each_case, 2, T.run_eval_job, [(images, texts, str(root / name), STEPS, 1, pp, init, str(root / f"{name}.json"))
                                             for name, pp in (("dp2", 1), ("pp2", 2))])
    return {name: json.loads((root / f"{name}.json").read_text()) for name in ("single", "dp2", "pp2")}


def test_val_losses_at_the_interval_and_the_end(runs):
    val = runs["single"]["val_losses"]
    assert [it for it, _ in val] == [2, STEPS]
    assert all(math.isfinite(loss) and 0 < loss < 20 for _, loss in val), val


def test_val_loss_is_the_same_at_every_layout(runs):
    single = runs["single"]
    for name in ("dp2", "pp2"):
        assert [it for it, _ in runs[name]["val_losses"]] == [2, STEPS]
        assert [v for _, v in runs[name]["val_losses"]] == pytest.approx([v for _, v in single["val_losses"]],
                                                                          rel=1e-5), name
        assert runs[name]["losses"] == pytest.approx(single["losses"], rel=1e-5), name


def test_val_loss_on_the_training_data_falls(runs):
    (_, after_2), (_, after_4) = runs["single"]["val_losses"]
    assert after_4 < after_2
