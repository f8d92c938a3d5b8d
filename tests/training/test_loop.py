"""The training loop on real data: it learns, and a run stopped and resumed equals an uninterrupted one."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from megatron_solo.platform import spawn
from tests.harness import training as T

pytestmark = pytest.mark.multiprocess

STEPS = 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One uninterrupted DP2 run of STEPS steps, and one stopped after 2 steps then resumed."""
    root = tmp_path_factory.mktemp("loop")
    images, texts = T.build_shards(root)
    straight, resumed = str(root / "straight"), str(root / "resumed")
    spawn(T.run_job, 2, images, texts, straight, STEPS, None, str(root / "straight.json"))
    spawn(T.run_job, 2, images, texts, resumed, STEPS, 2, str(root / "first_half.json"))
    copied = root / "copied"  # a copy that skipped the latest file: it must resume, never overwrite iter_2
    shutil.copytree(resumed, copied)
    (copied / "latest_checkpointed_iteration.txt").unlink()
    iter2 = {p.relative_to(copied): p.read_bytes() for p in (copied / "iter_0000002").rglob("*") if p.is_file()}
    spawn(T.run_job, 2, images, texts, resumed, STEPS, None, str(root / "second_half.json"))
    spawn(T.run_job, 2, images, texts, str(copied), STEPS, None, str(root / "copied.json"))
    iter2_after = {p.relative_to(copied): p.read_bytes() for p in (copied / "iter_0000002").rglob("*") if p.is_file()}
    for name, ckpt in (("straight", straight), ("resumed", resumed)):
        spawn(T.final_weights, 1, images, texts, ckpt, str(root / f"{name}.safetensors"))
    read = lambda name: json.loads((root / f"{name}.json").read_text())  # noqa: E731
    return {
        "straight": read("straight"), "first": read("first_half"), "second": read("second_half"),
        "copied": read("copied"), "iter2_kept": iter2 == iter2_after,
        "w_straight": load_file(str(root / "straight.safetensors")),
        "w_resumed": load_file(str(root / "resumed.safetensors")),
    }


def test_loss_goes_down(runs):
    losses = runs["straight"]["losses"]
    assert len(losses) == STEPS and losses[-1] < losses[0]


def test_stop_and_resume_loses_no_step(runs):
    first, second = runs["first"], runs["second"]
    assert first["preempted"] and first["iteration"] == 2
    assert second["resumed_from"] == 2 and second["iteration"] == STEPS
    # same packs, same optimizer state, same RNG: the very same losses and weights
    assert first["losses"] + second["losses"] == pytest.approx(runs["straight"]["losses"], rel=1e-6)
    for k, v in runs["w_straight"].items():
        torch.testing.assert_close(runs["w_resumed"][k], v, rtol=1e-6, atol=1e-7), k


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
