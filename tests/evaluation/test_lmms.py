"""lmms-eval itself, offline, scoring our export through the ``solo`` model on lmms-eval's own MME task.

The task is lmms-eval's stock ``mme.yaml`` (its prompt, its answer parsing, its perception / cognition
aggregation), pointed at a tiny local parquet in lmms-eval's MME schema with real photos. The model can
only say "Yes" or "No" (tests/harness/eval_workers.make_yes_no_export), which one depending on its input,
so the score is neither trivial nor guessable (its head is built on the prompts tools/evaluate.py makes;
lmms-eval's answers match only if lmms-eval feeds it the same ids and patches). tools/evaluate.py's score of the same file must equal
lmms-eval's, and so must every answer.

lmms-eval 0.7 pulls a newer torch and an older protobuf than our pins: it runs in its own virtual
environment (``.ci/run`` builds it and sets SOLO_LMMS_PYTHON); where neither that nor an importable
lmms_eval is there, the test says so and skips.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_solo.config.evaluation import EvalConfig
from megatron_solo.evaluation.run import evaluate
from tests.harness import eval_benchmarks as files
from tests.harness.eval_workers import make_yes_no_export
from tests.harness.paths import REPO

pytestmark = pytest.mark.multiprocess  # lmms-eval runs in processes of its own environment


def _lmms_python() -> str:
    given = os.environ.get("SOLO_LMMS_PYTHON")
    if given:
        return given
    if importlib.util.find_spec("lmms_eval") is not None:
        return sys.executable
    pytest.skip("lmms-eval is not installed here (its own venv: .ci/run sets SOLO_LMMS_PYTHON)")


def _stock_mme_yaml(python: str) -> str:
    code = "import lmms_eval, os; print(os.path.join(os.path.dirname(lmms_eval.__file__), 'tasks', 'mme', 'mme.yaml'))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def _lmms_eval(python: str, export: Path, task_dir: Path, out: Path) -> tuple[dict, list[dict]]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(out / "hf"), "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    cmd = [python, "-m", "megatron_solo.evaluation.lmms", "--model", "solo", "--model_args",
           f"pretrained={export},max_side=64", "--tasks", "solo_mme_local", "--include_path", str(task_dir),
           "--batch_size", "1", "--output_path", str(out), "--log_samples"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    found = list(out.rglob("*_results.json"))
    assert run.returncode == 0 and found, (run.stdout[-3000:], run.stderr[-3000:])  # lmms-eval exits 0 on errors
    results = json.loads(found[0].read_text())["results"]["solo_mme_local"]
    samples = [json.loads(line) for f in out.rglob("*samples_solo_mme_local*.jsonl") for line in f.open()]
    return results, samples


def _answer(sample: dict) -> str:
    """The model's answer in one logged lmms-eval sample (lists of one response are nested or flattened)."""
    value = sample.get("resps", sample.get("filtered_resps"))
    while isinstance(value, list):
        value = value[0]
    return str(value).strip()


def _our_prompts(export: Path, parquet: Path) -> list:
    """(ids, patches) of each MME question as tools/evaluate.py prompts it (what the yes/no head is built on)."""
    from megatron_solo.evaluation.bench_files import read_items
    from megatron_solo.evaluation.benchmarks import BENCHMARKS, _prompt
    from megatron_solo.hf.processor import SoloProcessor

    processor = SoloProcessor.from_pretrained(export)
    processor.max_side = 64
    return [processor.encode_one(_prompt(BENCHMARKS["mme"], it, "plain", True), it.images, False)
            for it in read_items(parquet)]


@pytest.fixture(scope="module")
def setup(request, tmp_path_factory):
    """lmms-eval's python, the yes/no export (a copy of the session's ``sharp_mistral`` export, imported at TP1,
    with its head rewritten) and the MME parquet."""
    python = _lmms_python()  # before the shared model is asked for: a run without lmms-eval builds nothing
    root = tmp_path_factory.mktemp("lmms")
    export = shutil.copytree(request.getfixturevalue("sharp_mistral")["export"], root / "export")
    parquet = files.mme_parquet(root / "mme.parquet")
    make_yes_no_export(export, _our_prompts(export, parquet))
    return {"python": python, "root": root, "export": export, "parquet": parquet}


def test_lmms_eval_with_our_solo_model_scores_mme_as_evaluate_does(setup):
    root, export, parquet = setup["root"], setup["export"], setup["parquet"]
    task_dir = root / "tasks"
    task_dir.mkdir()
    (task_dir / "solo_mme_local.yaml").write_text(
        f"include: {_stock_mme_yaml(setup['python'])}\ntask: solo_mme_local\ndataset_path: parquet\n"
        f"dataset_kwargs:\n  data_files:\n    test: {parquet}\n"
        "generation_kwargs:\n  max_new_tokens: 1\n  temperature: 0\n  do_sample: false\n")
    lmms, samples = _lmms_eval(setup["python"], export, task_dir, root / "lmms_out")

    cfg = EvalConfig(hf=str(export), benchmark=[f"mme={parquet}"], benchmark_max_new_tokens=1, max_side=64,
                     progress=False)
    ours = evaluate(cfg)["benchmarks"]["mme"]
    answers = [i["generated"].strip() for i in ours["items"]]
    assert set(answers) == {"Yes", "No"}  # the model's answer depends on its input
    assert 0 < ours["generate"]["perception"] < 200 * len({r[3] for r in files.MME_ROWS})
    assert lmms["mme_perception_score,none"] == pytest.approx(ours["generate"]["perception"])
    by_doc = {s["doc_id"]: _answer(s) for s in samples if "doc_id" in s}
    assert [by_doc[k] for k in range(len(files.MME_ROWS))] == answers


def test_solo_loglikelihood_is_the_exports_own_log_probability(setup):
    """Independent reference: transformers' ``labels`` loss of the export on context + continuation, and the
    argmax of its logits for is_greedy."""
    from megatron_solo.hf.generate import load_exported
    from megatron_solo.hf.processor import fuyu_image_key, solo_to_fuyu_patches
    from tests.harness.eval_lmms import REQUESTS

    image = setup["root"] / "cat.png"
    image.write_bytes(files.png("chelsea"))
    out = setup["root"] / "loglik.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([setup["python"], "-m", "tests.harness.eval_lmms", str(setup["export"]), str(image),
                          str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(out.read_text())
    model, proc = load_exported(setup["export"])
    proc.max_side = 64
    for (ctx, cont), (logprob, greedy) in zip(REQUESTS, got):
        ids, patches = proc.encode_one(ctx, [str(image)], False)
        cont_ids = proc.tokenizer.encode(cont.lstrip())
        tokens = torch.tensor([ids + cont_ids])
        labels = torch.full_like(tokens, -100)
        labels[0, len(ids):] = tokens[0, len(ids):]
        pixels = {fuyu_image_key(): solo_to_fuyu_patches(torch.cat(patches))[None]}
        with torch.no_grad():
            res = model(input_ids=tokens, labels=labels, **pixels)
        assert logprob == pytest.approx(-res.loss.item() * len(cont_ids), rel=1e-4, abs=1e-4), (ctx, cont)
        argmax = res.logits[0, len(ids) - 1:-1].argmax(-1).tolist()
        assert greedy == (argmax == cont_ids), (ctx, cont)
    assert [g for _, g in got][:2].count(True) == 1  # the head says Yes or No: exactly one of them is greedy
