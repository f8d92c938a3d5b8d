"""lmms-eval itself, offline, scoring our export through the ``solo`` model on lmms-eval's own MME, POPE and
MMBench tasks.

The tasks are lmms-eval's stock yamls (``mme.yaml``, ``pope.yaml``, ``mmbench_en_dev_static.yaml``: their
prompts, their answer parsing, their aggregation), pointed at tiny local parquet files in the schemas of the
datasets they load, with real photos. The model's head is rewritten so that its one-token answer to each
question is a word the test chooses (tests/harness/eval_workers.make_answering_export): mixed Yes/No, some of
them wrong, and for MMBench letters right in some rotations only, so no score is trivial. The head is fitted
on the prompts tools/evaluate.py makes and on the ones lmms-eval's MMBench task makes (its own layout,
rebuilt here); lmms-eval's answers match only if lmms-eval feeds the model those ids and patches.
tools/evaluate.py's scores of the same files, read by lmms-eval's rules, must equal lmms-eval's, and so must
every answer.

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
from tests.harness import bench_rows as rows
from tests.harness import eval_benchmarks as files
from tests.harness.eval_workers import make_answering_export
from tests.harness.paths import REPO

pytestmark = pytest.mark.multiprocess  # lmms-eval runs in processes of its own environment


def _lmms_python() -> str:
    given = os.environ.get("SOLO_LMMS_PYTHON")
    if given:
        return given
    if importlib.util.find_spec("lmms_eval") is not None:
        return sys.executable
    pytest.skip("lmms-eval is not installed here (its own venv: .ci/run sets SOLO_LMMS_PYTHON)")


def _stock_tasks(python: str) -> Path:
    code = "import lmms_eval, os; print(os.path.join(os.path.dirname(lmms_eval.__file__), 'tasks'))"
    return Path(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip())


def _lmms_eval(python: str, export: Path, task_dir: Path, tasks: list[str], out: Path) -> tuple[dict, dict]:
    """lmms-eval's results and its logged samples, per task."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(out / "hf"), "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    # two runs of one config file: the export, then a copy of it whose weights file is damaged, which
    # lmms-eval fails to load (it logs the error and goes on): the launcher passes that failure on
    damaged = out / "damaged_export"
    shutil.copytree(export, damaged)
    for weights in damaged.glob("*.safetensors"):
        weights.write_bytes(b"damaged")
    runs = out / "runs.yaml"
    runs.write_text(json.dumps([{"model_args": f"pretrained={folder},max_side=64"} for folder in (export, damaged)]))
    cmd = [python, "-m", "megatron_solo.evaluation.lmms", "--config", str(runs), "--model", "solo",
           "--tasks", ",".join(tasks), "--include_path", str(task_dir),
           "--batch_size", "1", "--output_path", str(out), "--log_samples"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    found = [f for f in out.rglob("*_results.json") if "submissions" not in f.parts]  # not MMBench's own file
    assert run.returncode == 1 and found, (run.stdout[-3000:], run.stderr[-3000:])
    assert run.stderr.strip().splitlines()[-1].startswith("error: lmms-eval's evaluation failed"), run.stderr[-3000:]
    results = json.loads(found[0].read_text())["results"]
    samples = {t: [json.loads(line) for f in out.rglob(f"*samples_{t}*.jsonl") for line in f.open()] for t in tasks}
    return results, samples


def _answers(samples: list[dict]) -> list[str]:
    """The model's answers in lmms-eval's logged samples, in document order (lists of one are nested or flat)."""
    by_doc = {}
    for sample in samples:
        value = sample.get("resps", sample.get("filtered_resps"))
        while isinstance(value, list):
            value = value[0]
        by_doc[sample["doc_id"]] = str(value).strip()
    return [by_doc[k] for k in range(len(by_doc))]


def _lmms_mmbench_context(question: str, hint: str | None, options: list[str]) -> str:
    """The prompt lmms-eval's MMBench task builds (en_utils.mmbench_doc_to_text: its sys_prompt, default
    post_prompt)."""
    listed = "There are several options:\n" + "\n".join(f"{c}. {o}" for c, o in zip("ABCD", options))
    body = f"{hint} {question} {listed}" if hint else f"{question} {listed}"
    return f"{body}\n\nAnswer with the option's letter from the given choices directly."


# the model's answer per row: MME's and POPE's mixed, some wrong; MMBench's cat wrong in its last rotation only
MME_ANSWERS = ["Yes", "Yes", "No", "No", "Yes", "Yes", "No", "No"]
POPE_ANSWERS = ["Yes", "No", "Yes", "Yes", "Yes", "No"]  # rows 0 and 2 are one prompt (two splits)
MMBENCH_ANSWERS = ["C", "B", "A", "A", "A", "B", "B"]


def _prompts(export: Path, files_: dict[str, Path]) -> tuple[list, list[str]]:
    """(ids, patches) of every question as tools/evaluate.py and lmms-eval's MMBench prompt it, and its answer."""
    from megatron_solo.evaluation.bench_files import read_items
    from megatron_solo.evaluation.benchmarks import BENCHMARKS, _prompt
    from megatron_solo.hf.processor import SoloProcessor

    processor = SoloProcessor.from_pretrained(export)
    processor.max_side = 64
    prompts, answers = [], []
    for name, chosen in (("mme", MME_ANSWERS), ("pope", POPE_ANSWERS), ("mmbench", MMBENCH_ANSWERS)):
        items = read_items(files_[name])
        prompts += [processor.encode_one(_prompt(BENCHMARKS[name], it, "plain", True), it.images, False)
                    for it in items]
        answers += chosen
        if name == "mmbench":
            prompts += [processor.encode_one(_lmms_mmbench_context(it.question, it.hint, it.options), it.images,
                                             False) for it in items]
            answers += chosen
    return prompts, answers


@pytest.fixture(scope="module")
def setup(request, tmp_path_factory):
    """lmms-eval's python, the answering export (a copy of the session's ``sharp_mistral`` export, imported at TP1,
    with its head rewritten) and the MME, POPE and MMBench parquet files."""
    python = _lmms_python()  # before the shared model is asked for: a run without lmms-eval builds nothing
    root = tmp_path_factory.mktemp("lmms")
    export = shutil.copytree(request.getfixturevalue("sharp_mistral")["export"], root / "export")
    bench = {"mme": files.mme_parquet(root / "mme.parquet"), "pope": rows.pope_parquet(root / "pope.parquet"),
             "mmbench": rows.mmbench_parquet(root / "mmbench.parquet")}
    make_answering_export(export, *_prompts(export, bench))
    return {"python": python, "root": root, "export": export, "files": bench}


def _local_task(task_dir: Path, name: str, stock: Path, split: str, data: Path) -> str:
    (task_dir / f"{name}.yaml").write_text(
        f"include: {stock}\ntask: {name}\ndataset_path: parquet\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    {split}: {data}\n"
        "generation_kwargs:\n  max_new_tokens: 1\n  temperature: 0\n  do_sample: false\n")
    return name


def test_lmms_eval_with_our_solo_model_scores_mme_pope_and_mmbench_as_evaluate_does(setup):
    root, export, bench = setup["root"], setup["export"], setup["files"]
    stock, task_dir = _stock_tasks(setup["python"]), root / "tasks"
    task_dir.mkdir()
    tasks = [_local_task(task_dir, "solo_mme_local", stock / "mme" / "mme.yaml", "test", bench["mme"]),
             _local_task(task_dir, "solo_pope_local", stock / "pope" / "pope.yaml", "test", bench["pope"]),
             _local_task(task_dir, "solo_mmbench_local", stock / "mmbench" / "mmbench_en_dev_static.yaml", "dev",
                         bench["mmbench"])]
    lmms, samples = _lmms_eval(setup["python"], export, task_dir, tasks, root / "lmms_out")

    cfg = EvalConfig(hf=str(export), benchmark=[f"{name}={path}" for name, path in bench.items()],
                     benchmark_max_new_tokens=1, max_side=64, progress=False)
    ours = evaluate(cfg)["benchmarks"]
    for name, task, chosen in (("mme", tasks[0], MME_ANSWERS), ("pope", tasks[1], POPE_ANSWERS),
                               ("mmbench", tasks[2], MMBENCH_ANSWERS)):
        assert ours[name]["answer_rule"] == "lmms-eval"
        assert [i["generated"].strip() for i in ours[name]["items"]] == chosen == _answers(samples[task]), name
    mme, pope, mmb = (ours[n]["generate"] for n in ("mme", "pope", "mmbench"))
    assert 0 < mme["perception"] < 200 * len({r[3] for r in files.MME_ROWS})
    assert lmms[tasks[0]]["mme_perception_score,none"] == pytest.approx(mme["perception"])
    for ours_key, lmms_key in (("accuracy", "pope_accuracy"), ("precision", "pope_precision"),
                               ("recall", "pope_recall"), ("f1", "pope_f1_score"), ("truth_yes_ratio", "pope_yes_ratio")):
        assert lmms[tasks[1]][f"{lmms_key},none"] == pytest.approx(pope[ours_key]), ours_key
    assert 0 < pope["accuracy"] < 1 and 0 < mmb["circular_accuracy"] < 1
    assert lmms[tasks[2]]["gpt_eval_score,none"] == pytest.approx(100 * mmb["circular_accuracy"])


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
