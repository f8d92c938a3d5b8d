"""tools/evaluate.py on a Megatron checkpoint and on its HF export: the same numbers, at TP1, TP2 and PP2.

The model is a small random HF Mistral (sharpened head) imported with the SOLO tokens and exported
again; the data are real photos (skimage) preprocessed into shards, a text source, a multiple-choice
file and images to caption (tests/harness/eval_data.py), and MME / MMBench in VLMEvalKit's TSV
(tests/harness/eval_benchmarks.py), scored officially by log-likelihood and by generation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_solo.config.evaluation import EvalConfig
from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.evaluation.errors import EvaluationError
from megatron_solo.evaluation.run import evaluate
from tests.harness import eval_benchmarks, eval_data
from tests.harness.eval_workers import evaluate_worker
from tests.harness.paths import REPO
from tests.harness.worlds import run_world

# The TP2 and PP2 runs start gloo worlds; the TP1 run is a one-rank world in this process.
pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def setup(sharp_mistral, tmp_path_factory):
    """Data, a Megatron checkpoint (imported at TP1) and its HF export (the session's ``sharp_mistral``)."""
    root = tmp_path_factory.mktemp("eval")
    data = eval_data.build(root)
    data["benchmarks"] = [f"mme={eval_benchmarks.mme_tsv(root / 'MME.tsv')}",
                          f"mmbench={eval_benchmarks.mmbench_tsv(root / 'MMBench_DEV_EN.tsv')}"]
    return {"root": root, "data": data, "mg": sharp_mistral["mg"], "export": sharp_mistral["export"]}


def _config(setup, name: str, **kw) -> EvalConfig:
    d = setup["data"]
    base = dict(val_data=[f"{d['images']}:photos", str(d["texts"])], classify=str(d["images"]), mcq=str(d["mcq"]),
                caption_images=[str(p) for p in d["captions"]], max_side=eval_data.MAX_SIDE, batch_tokens=96,
                benchmark=d["benchmarks"], benchmark_mode="both", benchmark_max_new_tokens=3,
                mcq_max_new_tokens=6, caption_max_new_tokens=10, progress=False,
                out=str(setup["root"] / f"{name}.json"))
    return EvalConfig(**{**base, **kw})


def _read(cfg: EvalConfig) -> dict:
    return json.loads(Path(cfg.out).read_text())


@pytest.fixture(scope="module")
def reports(setup):
    """HF and Megatron TP1 (a one-rank world) reports, plain and chat templates, all in this process."""
    hf = _config(setup, "hf", hf=str(setup["export"]))
    hf_chat = _config(setup, "hf_chat", hf=str(setup["export"]), template="chat", val_data=[], classify=None,
                      caption_images=[], benchmark=[])
    tp1 = dataclasses.replace(hf, checkpoint=str(setup["mg"]), hf=None, out=str(setup["root"] / "tp1.json"))
    tp1_chat = dataclasses.replace(hf_chat, checkpoint=str(setup["mg"]), hf=None,
                                   out=str(setup["root"] / "tp1_chat.json"))
    evaluate(hf)
    evaluate(hf_chat)
    run_world(evaluate_worker, 1, [tp1, tp1_chat])
    return {name: _read(cfg) for name, cfg in (("hf", hf), ("hf_chat", hf_chat), ("tp1", tp1),
                                                ("tp1_chat", tp1_chat))}


def _assert_same(a: dict, b: dict, rel: float = 1e-4) -> None:
    """Losses to ``rel``, every prediction and generated token identical."""
    assert a["val_loss"].keys() == b["val_loss"].keys()
    for name, v in a["val_loss"].items():
        w = b["val_loss"][name]
        assert (v["tokens"], v["documents"]) == (w["tokens"], w["documents"])
        assert v["loss"] == pytest.approx(w["loss"], rel=rel), name
    for key in ("top1", "top5", "predictions"):
        assert a["classification"][key] == b["classification"][key], key
    _assert_same_mcq(a["mcq"], b["mcq"])
    assert a["captions"]["items"] == b["captions"]["items"]
    assert a["benchmarks"].keys() == b["benchmarks"].keys() == {"mme", "mmbench"}
    for name, bench in a["benchmarks"].items():
        _assert_same_mcq(bench, b["benchmarks"][name])  # every answer and the official scores of both modes


def _assert_same_mcq(a: dict, b: dict) -> None:
    assert a["items"] == b["items"]
    for mode in ("loglik", "generate"):
        assert a[mode] == b[mode], mode


def test_megatron_checkpoint_and_hf_export_agree(reports):
    hf, tp1 = reports["hf"], reports["tp1"]
    assert tp1["model"]["layout"] == "TP1PP1DP1" and hf["model"]["backend"] == "hf"
    _assert_same(tp1, hf)
    assert tp1["val_loss"]["photos"]["documents"] == 12 and tp1["classification"]["classes"] == 4
    assert set(tp1["val_loss"]) == {"photos", "text"}
    # the machinery ran for real: generations are non-empty, every answer form was parsed
    assert all(item["tokens"] for item in tp1["captions"]["items"])
    assert [i["answer"] for i in tp1["mcq"]["items"]] == ["A", "B", "C", "D", "A"]
    assert all(i["generated"] for i in tp1["mcq"]["items"])


def test_chat_template_agrees_and_differs_from_plain(reports):
    _assert_same_mcq(reports["tp1_chat"]["mcq"], reports["hf_chat"]["mcq"])
    assert reports["tp1_chat"]["mcq"]["template"] == "chat" and reports["tp1"]["mcq"]["template"] == "plain"
    plain = [i["generated"] for i in reports["tp1"]["mcq"]["items"]]
    assert plain != [i["generated"] for i in reports["tp1_chat"]["mcq"]["items"]]


def test_tp2_through_torchrun_and_pp2_equal_tp1(setup, reports):
    tp2 = _config(setup, "tp2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(REPO / "tools/evaluate.py"),
           "--checkpoint", str(setup["mg"]), "--tensor-parallel", "2", "--val-data", *tp2.val_data,
           "--classify", tp2.classify, "--mcq", tp2.mcq, "--caption-images", *tp2.caption_images,
           "--max-side", str(tp2.max_side), "--batch-tokens", str(tp2.batch_tokens),
           "--mcq-max-new-tokens", str(tp2.mcq_max_new_tokens),
           "--caption-max-new-tokens", str(tp2.caption_max_new_tokens), "--benchmark", *tp2.benchmark,
           "--benchmark-mode", tp2.benchmark_mode, "--benchmark-max-new-tokens", str(tp2.benchmark_max_new_tokens),
           "--out", tp2.out, "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "classification" in run.stdout and "top-1 / top-5" in run.stdout  # the table, printed once
    assert run.stdout.count("val loss photos") == 1
    assert re.search(r"^MMBench \(loglik, VLMEvalKit rules\) +circular accuracy", run.stdout, re.M)  # the paper's layout
    pp2 = _config(setup, "pp2", checkpoint=str(setup["mg"]), parallel=ParallelConfig(pipeline_parallel=2))
    run_world(evaluate_worker, 2, [pp2])
    for name, cfg in (("TP2PP1DP1", tp2), ("TP1PP2DP1", pp2)):
        report = _read(cfg)
        assert report["model"]["layout"] == name
        _assert_same(report, reports["tp1"], rel=1e-5)


def test_validation_loss_is_the_training_loss_of_each_document(setup, reports):
    """Independent reference: the training dataset's packs, cut at their document boundaries, each document
    scored by transformers' own ``labels`` loss on the export."""
    from megatron_solo.config.data import DataConfig, DatasetSource
    from megatron_solo.data.dataset import PackedDataset
    from megatron_solo.hf.generate import load_exported
    from megatron_solo.hf.processor import solo_to_fuyu_patches

    model, proc = load_exported(setup["export"])
    for name, path in (("photos", setup["data"]["images"]), ("text", setup["data"]["texts"])):
        ds = PackedDataset(DataConfig(datasets=[DatasetSource(str(path))], weighting="samples"), seq_length=256)
        total = count = docs = 0
        for g in range(len(ds)):
            pack = ds[g]
            cu = pack["cu_seqlens"].tolist()
            used = 0
            for a, b in zip(cu[:-1], cu[1:]):
                tokens, mask = pack["tokens"][a:b], pack["loss_mask"][a:b]
                if not mask.any():
                    continue  # the pack's trailing padding
                n_patch = int((tokens == proc.tokenizer.vpatch_id).sum())
                labels = torch.full_like(tokens, -100)
                labels[1:] = torch.where(mask[:-1] > 0, tokens[1:], torch.full_like(tokens[1:], -100))
                extra = {}
                if n_patch:
                    extra["pixel_values"] = solo_to_fuyu_patches(pack["patches"][used:used + n_patch])[None]
                used += n_patch
                with torch.no_grad():
                    loss = model(input_ids=tokens[None], labels=labels[None], **extra).loss
                n = int(mask.sum())
                total, count, docs = total + loss.item() * n, count + n, docs + 1
        ours = reports["tp1"]["val_loss"][name]
        assert (ours["documents"], ours["tokens"]) == (docs, count), name
        assert ours["loss"] == pytest.approx(total / count, rel=1e-5), name


def test_classification_names_a_wrong_template(setup):
    cfg = _config(setup, "bad", hf=str(setup["export"]), val_data=[], mcq=None, caption_images=[], benchmark=[],
                  caption_template="an image of a {}")
    with pytest.raises(EvaluationError, match="wrong template or class names"):
        evaluate(cfg)


def test_classification_reads_template_and_names_beside_the_shards(setup, reports):
    """No --class-names / --caption-template: preprocess_config.json of the shards supplies both."""
    c = reports["hf"]["classification"]
    assert c["caption_template"] == eval_data.TEMPLATE
    assert Path(c["class_names"]) == setup["data"]["class_names"]
    assert {p["true"] for p in c["predictions"]} == set(eval_data.CLASSES.values())


def test_classes_without_a_name_map_are_the_labels_and_the_baseline_takes_mixed_sizes(setup):
    """Class folders preprocessed with no --class-names and a held-out part: the labels recorded in the shards
    are the classes; the photos' several sizes are resampled to the most common one for logistic regression."""
    from megatron_solo.config.data import PreprocessConfig
    from megatron_solo.data.preprocess import preprocess

    out = setup["root"] / "unnamed"
    preprocess(PreprocessConfig(kind="classification", inputs=[str(setup["data"]["classes"])], output=str(out),
                                max_side=eval_data.MAX_SIDE, workers=0, shard_size=5, holdout=4), progress=False)
    assert json.loads((out / "stats.json").read_text())["labels"] == ["0", "1", "2", "3"]
    cfg = _config(setup, "unnamed", hf=str(setup["export"]), val_data=[], mcq=None, caption_images=[], benchmark=[],
                  classify=str(out / "heldout"), baseline_train=str(out))
    evaluate(cfg)
    c = _read(cfg)["classification"]
    assert c["class_names"] == f"the labels of {out / 'heldout'}" and c["samples"] == 4
    assert {p["true"] for p in c["predictions"]} <= {"0", "1", "2", "3"} and all(
        len(p["top5"]) == 4 for p in c["predictions"])
    base = c["logreg_baseline"]
    assert (base["train"], base["n"]) == (8, 4) and 0.0 <= base["accuracy"] <= 1.0
    assert base["resized_images"] > 0 and base["features"] == 3 * base["image_size"][0] * base["image_size"][1]
