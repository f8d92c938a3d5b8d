"""The training loop on real data: it learns, and a run stopped and resumed equals an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.harness import training as T
from tests.harness.worlds import run_world

STEPS = 4


def _files(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, world1, quickstart_shards):
    """One uninterrupted DP2 run of STEPS steps, one stopped after 2 steps then resumed, and a copy of the
    stopped run without its latest file, resumed: all in one DP2 world; the weights read back here."""
    from tests.harness.guarded_run import weights_of

    root = tmp_path_factory.mktemp("loop")
    images, texts = quickstart_shards
    run_world(T.loop_runs, 2, images, texts, str(root), STEPS)
    outs = [str(root / f"{name}.safetensors") for name in ("straight", "resumed")]
    run_world(weights_of, 1, images, texts, [str(root / "straight"), str(root / "resumed")], outs)
    read = lambda name: json.loads((root / f"{name}.json").read_text())  # noqa: E731
    return {
        "straight": read("straight"), "first": read("first_half"), "second": read("second_half"),
        "copied": read("copied"),
        # the copy must resume, never overwrite its iter_2
        "iter2_kept": _files(root / "iter2_before") == _files(root / "copied" / "iter_0000002"),
        "w_straight": load_file(outs[0]), "w_resumed": load_file(outs[1]),
    }


@pytest.mark.multiprocess
def test_loss_goes_down(runs):
    losses = runs["straight"]["losses"]
    assert len(losses) == STEPS and losses[-1] < losses[0]


@pytest.mark.multiprocess
def test_stop_and_resume_loses_no_step(runs):
    first, second = runs["first"], runs["second"]
    assert first["preempted"] and first["iteration"] == 2
    assert second["resumed_from"] == 2 and second["iteration"] == STEPS
    # same packs, same optimizer state, same RNG: the very same losses and weights
    assert first["losses"] + second["losses"] == pytest.approx(runs["straight"]["losses"], rel=1e-6)
    for k, v in runs["w_straight"].items():
        torch.testing.assert_close(runs["w_resumed"][k], v, rtol=1e-6, atol=1e-7), k


@pytest.mark.multiprocess
def test_a_save_folder_without_its_latest_file_resumes_from_its_newest_checkpoint(runs):
    assert runs["copied"]["resumed_from"] == 2 and runs["copied"]["losses"] == runs["second"]["losses"]
    assert runs["iter2_kept"]


def test_a_save_folder_of_another_model_is_refused(tmp_path):
    from megatron_solo.checkpoint.metadata import write_metadata
    from megatron_solo.config import ParallelConfig, model_preset
    from megatron_solo.training.startup import RunSetupError, check_saved_model

    write_metadata(tmp_path, model_preset("solo-tiny", hidden_size=128), ParallelConfig())
    check_saved_model(str(tmp_path), model_preset("solo-tiny", hidden_size=128, transformer_impl="local"))
    with pytest.raises(RunSetupError, match="another model .*hidden_size 128 vs 64"):
        check_saved_model(str(tmp_path), model_preset("solo-tiny"))
