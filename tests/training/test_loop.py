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
        "w_straight": load_file(outs[0]), "w_resumed": load_file(outs[1]), "root": root,
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


@pytest.mark.multiprocess
def test_the_plain_optimizer_trains_saves_resumes_and_exports_in_bf16_and_fp32(runs, quickstart_shards,
                                                                                conversions_here):
    from megatron_solo.hf.exporter import export_checkpoint
    from tests.harness.guarded_run import weights_of

    root, (images, texts) = runs["root"], quickstart_shards
    run_world(T.plain_optimizer_runs, 2, images, texts, str(root), STEPS, str(root / "straight"))
    read = lambda name: json.loads((root / f"plain_{name}.json").read_text())  # noqa: E731
    for precision in ("bf16", "fp32"):
        first, second = read(f"{precision}_first_half"), read(f"{precision}_second_half")
        assert first["preempted"] and first["iteration"] == 2 and second["resumed_from"] == 2
        # bf16: the uninterrupted plain run's losses exactly; fp32: the distributed optimizer's (the same sums)
        straight, rel = (read("bf16_straight")["losses"], 0) if precision == "bf16" else (runs["straight"]["losses"], 1e-5)
        assert first["losses"] + second["losses"] == pytest.approx(straight, rel=rel, abs=0), precision
    assert "written by the distributed optimizer: resume without --no-distributed-optimizer" in read("refused")
    outs = [str(root / f"plain_bf16{run}.safetensors") for run in ("_straight", "")]
    run_world(weights_of, 1, images, texts, [str(root / "plain_bf16_straight"), str(root / "plain_bf16")], outs)
    straight, resumed = load_file(outs[0]), load_file(outs[1])
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    export = export_checkpoint(root / "plain_bf16", root / "plain_bf16_hf", progress=False)
    exported = {k: v for f in export.glob("model-*.safetensors") for k, v in load_file(f).items()}
    assert torch.equal(exported["model.language_model.norm.weight"], resumed["decoder.final_layernorm.weight"])
    head = exported["lm_head.weight"]
    assert torch.equal(head, resumed["output_layer.weight"][: len(head)].to(head.dtype))


def test_a_save_folder_of_another_model_is_refused(tmp_path):
    from megatron_solo.checkpoint.metadata import write_metadata
    from megatron_solo.config import ParallelConfig, model_preset
    from megatron_solo.training.startup import RunSetupError, check_saved_model

    write_metadata(tmp_path, model_preset("solo-tiny", hidden_size=128), ParallelConfig())
    check_saved_model(str(tmp_path), model_preset("solo-tiny", hidden_size=128, transformer_impl="local"))
    with pytest.raises(RunSetupError, match="another model .*hidden_size 128 vs 64"):
        check_saved_model(str(tmp_path), model_preset("solo-tiny"))
