"""A small megatron-core GPT trains identically under every TP x PP x DP layout."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from megatron_solo.platform import spawn
from tests.harness import layouts as H
from tests.harness.worlds import run_world

pytestmark = pytest.mark.multiprocess

WORLDS = {
    2: [(2, 1, None), (1, 2, None), (1, 1, None)],  # TP2PP1DP1, TP1PP2DP1, TP1PP1DP2
    4: [(2, 2, None), (1, 2, 2)],  # TP2PP2DP1, TP1PP2DP2 with 2 virtual stages
}
LAYOUTS = ["TP2PP1DP1", "TP1PP2DP1", "TP1PP1DP2", "TP2PP2DP1", "TP1PP2DP2VP2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Train every layout once and read back the weights at TP1PP1."""
    return H.run_layouts(tmp_path_factory.mktemp("layouts"), "gpt", WORLDS, corrupt_tp2=True)


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_matches_single_process(runs, name):
    H.assert_layout_matches(runs, name)


def test_training_moved_the_weights(runs):
    moved = H.relative_difference(runs["TP1PP1DP1"][1], runs["init"][1])
    assert min(moved.values()) > 1e-5, moved


def test_mis_sharded_weight_is_caught(runs):
    with pytest.raises(AssertionError):
        H.assert_layout_matches(runs, "corrupt/TP2PP1DP1")
    weight_diff = max(H.relative_difference(runs["corrupt/TP2PP1DP1"][1], runs["TP1PP1DP1"][1]).values())
    assert weight_diff > 1e-3  # the flipped shard is far from the reference


def test_checkpoint_reshards_weights_and_optimizer_across_layouts(tmp_path):
    """TP2PP1 -> TP1PP2 -> TP2PP1 -> DP2 -> TP1PP2VP2, each loading the one before: the weights, and the
    distributed optimizer's state in megatron-core's own gathered form, equal the first layout's exactly."""
    spawn(H.reshard_round_trip, 2, str(tmp_path))
    names = [name for name, _, _ in H.RESHARD_STEPS]
    full, optim = {}, {}
    for name in names:
        out = str(tmp_path / f"{name}.safetensors")
        run_world(H.read_weights, 1, str(tmp_path / name), out)
        full[name] = load_file(out)
        out = str(tmp_path / f"{name}_reference.safetensors")
        run_world(H.read_optimizer_reference, 1, str(tmp_path / f"{name}_reference"), out)
        optim[name] = load_file(out)
    first = names[0]
    assert {k.split(".")[2] for k in optim[first]} == {"param", "exp_avg", "exp_avg_sq"}
    for name in names[1:]:
        for saved, loaded in ((full[first], full[name]), (optim[first], optim[name])):
            assert saved.keys() == loaded.keys()
            for k in saved:
                assert (saved[k] == loaded[k]).all(), (name, k)
