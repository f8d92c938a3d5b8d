"""SoloModel with images in the batch: TP2 (with and without sequence parallelism), PP2 (vision path on
stage 0 only) and DP2 match TP1."""

from __future__ import annotations

import pytest

from tests.harness import layouts as H

pytestmark = pytest.mark.multiprocess

WORLDS = {2: [(2, 1, None), (1, 2, None), (1, 1, None), (2, 1, None, True)]}  # the last: sequence parallel


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Train SoloModel under each layout from one initial checkpoint."""
    return H.run_layouts(tmp_path_factory.mktemp("solo_layouts"), "solo", WORLDS)


@pytest.mark.parametrize("name", ["TP2PP1DP1", "TP1PP2DP1", "TP1PP1DP2", "TP2PP1DP1SP"])
def test_solo_layout_matches_single_process(runs, name):
    # SGD, lr 1: the summed update of 3 steps is the summed gradient; the whole gradient
    # vector agrees within 1e-5 (norm-relative), each tensor within 1e-3.
    H.assert_layout_matches(runs, name, update_rtol=1e-5)


def test_patch_projection_trained_and_lives_on_stage_zero(runs):
    weights, init = runs["TP1PP1DP1"][1], runs["init"][1]
    assert "patch_projection.weight" in weights
    assert H.relative_difference(
        {"p": weights["patch_projection.weight"]}, {"p": init["patch_projection.weight"]}
    )["p"] > 1e-5
