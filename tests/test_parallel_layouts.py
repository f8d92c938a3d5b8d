"""A small megatron-core GPT trains identically under every TP x PP x DP layout."""

from __future__ import annotations

import json
import pytest
from safetensors.torch import load_file

from megatron_solo.platform import spawn
from tests.harness import layouts as H

WORLD2 = [(2, 1, None), (1, 2, None), (1, 1, None)]  # TP2PP1DP1, TP1PP2DP1, TP1PP1DP2
WORLD4 = [(2, 2, None), (1, 2, 2)]  # TP2PP2DP1, TP1PP2DP2 with 2 virtual stages


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Train every layout once (three process worlds) and read back the weights at TP1PP1."""
    root = tmp_path_factory.mktemp("layouts")
    init = str(root / "init")
    spawn(H.save_initial, 1, init)
    spawn(H.train_layouts, 1, [(1, 1, None)], init, str(root), False)
    spawn(H.train_layouts, 2, WORLD2, init, str(root), False)
    spawn(H.train_layouts, 4, WORLD4, init, str(root), False)
    spawn(H.train_layouts, 2, [(2, 1, None)], init, str(root / "corrupt"), True)
    names = ["TP1PP1DP1", "TP2PP1DP1", "TP1PP2DP1", "TP1PP1DP2", "TP2PP2DP1", "TP1PP2DP2VP2"]
    out = {}
    for name in [*names, "corrupt/TP2PP1DP1"]:
        weights = str(root / (name.replace("/", "_") + ".safetensors"))
        spawn(H.read_weights, 1, str(root / name), weights)
        with open(root / name / "losses.json") as f:
            losses = json.load(f)
        out[name] = (losses, load_file(weights))
    init_weights = str(root / "init.safetensors")
    spawn(H.read_weights, 1, init, init_weights)
    out["init"] = (None, load_file(init_weights))
    return out


LAYOUTS = ["TP2PP1DP1", "TP1PP2DP1", "TP1PP1DP2", "TP2PP2DP1", "TP1PP2DP2VP2"]


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_matches_single_process(runs, name):
    ref_losses, ref_weights = runs["TP1PP1DP1"]
    losses, weights = runs[name]
    init = runs["init"][1]
    assert len(losses) == H.STEPS
    for a, b in zip(losses, ref_losses):
        assert abs(a - b) / abs(b) <= 1e-5, (name, losses, ref_losses)
    weight_diff = H.relative_difference(weights, ref_weights)
    assert max(weight_diff.values()) <= 1e-5, (name, weight_diff)
    # The updates themselves (not only the weights, which barely move in 3 steps) agree.
    update = {k: weights[k] - init[k] for k in weights}
    ref_update = {k: ref_weights[k] - init[k] for k in ref_weights}
    update_diff = H.relative_difference(update, ref_update)
    assert max(update_diff.values()) <= 1e-3, (name, update_diff)


def test_training_moved_the_weights(runs):
    _, ref_weights = runs["TP1PP1DP1"]
    init = runs["init"][1]
    moved = H.relative_difference(ref_weights, init)
    assert min(moved.values()) > 1e-5, moved


def test_mis_sharded_weight_is_caught(runs):
    ref_losses, ref_weights = runs["TP1PP1DP1"]
    losses, weights = runs["corrupt/TP2PP1DP1"]
    loss_diff = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses))
    weight_diff = max(H.relative_difference(weights, ref_weights).values())
    assert loss_diff > 1e-5 or weight_diff > 1e-5
    assert weight_diff > 1e-3  # the flipped shard is far from the reference


def test_checkpoint_reshards_tp2pp1_to_tp1pp2_and_back(tmp_path):
    spawn(H.reshard_round_trip, 2, str(tmp_path))
    full = {}
    for name in ("a_tp2pp1", "b_tp1pp2", "c_tp2pp1"):
        out = str(tmp_path / f"{name}.safetensors")
        spawn(H.read_weights, 1, str(tmp_path / name), out)
        full[name] = load_file(out)
    for src, dst in (("a_tp2pp1", "b_tp1pp2"), ("b_tp1pp2", "c_tp2pp1")):
        assert full[src].keys() == full[dst].keys()
        for k in full[src]:
            assert (full[src][k] == full[dst][k]).all(), (src, dst, k)
