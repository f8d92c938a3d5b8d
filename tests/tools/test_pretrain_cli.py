"""tools/pretrain.py's command line: preset-aware defaults, named switches, warnings, exit codes and messages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_solo.config import model_preset, recipe
from megatron_solo.config.recipes import SMALL
from megatron_solo.errors import UserInputError, run_tool
from megatron_solo.training.optimizer import build_scheduler, schedule_warning
from megatron_solo.vocab.ids import SOLO_CHAT_VOCAB_SIZE, SOLO_VOCAB_SIZE
from tests.harness.paths import REPO
from tools.pretrain import build_job, parse_args

TOOL = str(REPO / "tools" / "pretrain.py")


def job(*argv: str):
    return build_job(parse_args(["--data", "shards/a", *argv]))


def test_small_models_default_to_the_small_recipe():
    for model in ("solo-tiny", "solo-small"):
        train = job("--model", model).train
        assert (train.optim.lr, train.optim.warmup_steps, train.seq_length, train.global_batch_size,
                train.train_steps) == (SMALL["optim"]["lr"], SMALL["optim"]["warmup_steps"], SMALL["seq_length"],
                                       SMALL["global_batch_size"], SMALL["train_steps"])
        assert train.seq_length <= model_preset(model).max_position_embeddings
        assert schedule_warning(train) is None


def test_solo_7b_keeps_stage1_and_an_explicit_recipe_wins():
    train = job("--model", "solo-7b").train
    assert (train.optim.lr, train.optim.warmup_steps, train.seq_length, train.global_batch_size) == (
        5e-5, 200, 32768, 128)
    assert job("--model", "solo-tiny", "--recipe", "stage1").train.optim.lr == 5e-5
    assert job("--model", "solo-tiny", "--lr", "1e-3").train.optim.lr == 1e-3


def test_template_follows_the_recipe():
    assert job("--recipe", "sft").template == "chat"
    assert job("--recipe", "stage2").template == "plain"
    assert job("--model", "solo-tiny").template == "plain"


def test_chat_tokens_switch_sets_the_chat_vocabulary():
    assert job("--chat-tokens").model_overrides["vocab_size"] == SOLO_CHAT_VOCAB_SIZE
    assert "vocab_size" not in job().model_overrides
    assert model_preset("solo-tiny", **job().model_overrides).vocab_size == SOLO_VOCAB_SIZE
    with pytest.raises(UserInputError, match="--chat-tokens"):
        job("--chat-tokens", "--model-overrides", '{"vocab_size": 33029}')


def test_tokenizer_flag_names_the_jobs_tokenizer():
    assert job("--tokenizer", "/data/sp.model").tokenizer == "/data/sp.model"
    assert job().tokenizer is None


def test_transformer_engine_and_fp8_flags_map_onto_the_model_config():
    overrides = job("--transformer-impl", "local", "--fp8", "hybrid", "--fp8-recipe", "tensorwise").model_overrides
    assert (overrides["transformer_impl"], overrides["fp8"], overrides["fp8_recipe"]) == ("local", "hybrid",
                                                                                          "tensorwise")
    assert not {"transformer_impl", "fp8", "fp8_recipe"} & set(job().model_overrides)
    with pytest.raises(UserInputError, match="--fp8-recipe needs --fp8"):
        parse_args(["--data", "a", "--fp8-recipe", "delayed"])
    with pytest.raises(UserInputError, match="--fp8"):
        parse_args(["--data", "a", "--fp8", "e5m2"])


def test_sequence_parallel_is_left_to_the_run_unless_a_switch_says():
    assert [job(*argv).parallel.sequence_parallel for argv in ([], ["--sequence-parallel"],
                                                               ["--no-sequence-parallel"])] == [None, True, False]


def test_eval_flags_make_eval_data_and_schedule():
    j = job("--model", "solo-tiny", "--eval-data", "held/a:2", "held/b", "--eval-interval", "7", "--eval-iters", "3")
    assert [(d.path, d.weight) for d in j.eval_data.datasets] == [("held/a", 2.0), ("held/b", 1.0)]
    assert (j.train.eval_interval, j.train.eval_iters) == (7, 3)
    assert j.eval_data.seed == j.data.seed
    assert job().eval_data is None


def test_every_training_value_is_an_option():
    j = job("--model", "solo-tiny", "--weight-decay", "0.2", "--clip-grad", "0", "--adam-beta2", "0.99",
            "--decay-style", "linear", "--overflow", "drop", "--open-bins", "8", "--eval-data", "held/a", "--tp", "2")
    assert (j.train.optim.weight_decay, j.train.optim.clip_grad, j.train.optim.adam_beta2) == (0.2, 0.0, 0.99)
    assert j.train.optim.decay_style == "linear" and j.train.optim.lr == SMALL["optim"]["lr"]  # the rest: the recipe's
    assert (j.data.overflow, j.data.open_bins) == ("drop", 8) and (j.eval_data.overflow, j.eval_data.open_bins) == (
        "drop", 8)
    assert j.parallel.tensor_parallel == 2 and job().parallel.tensor_parallel == 1


def test_bad_values_are_user_errors():
    for argv in (["--data", "a:x"], ["--data", "a:-1"], ["--eval-interval", "0"], ["--model-overrides", "{"],
                 ["--model-overrides", '{"no_such_field": 1}'], ["--exit-after-steps", "0"]):
        with pytest.raises(UserInputError):
            build_job(parse_args(["--data", "shards/a", *argv] if argv[0] != "--data" else argv))


@pytest.mark.parametrize("warmup,steps,expect", [
    (200, 20, "clamped to 19"), (10, 20, "at least half"), (2, 4, "only 4 steps"), (10, 200, None), (0, 1, "only 1 step,"),
])
def test_schedule_warning(warmup, steps, expect):
    train = recipe("small", train_steps=steps, optim={"warmup_steps": warmup})
    warning = schedule_warning(train)
    if expect is None:
        assert warning is None
    else:
        assert warning.startswith("warning: ") and expect in warning and "\n" not in warning


def test_warning_states_the_clamp_the_scheduler_applies():
    import torch

    train = recipe("small", train_steps=20, optim={"warmup_steps": 200})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert build_scheduler(opt, train).lr_warmup_steps == 19
    assert "clamped to 19" in schedule_warning(train)


# ----------------------------------------------------------------------------- the tool in a one-process world
def _run_process(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real entry point, ``python tools/pretrain.py``, in a process of its own."""
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HOME": str(cwd)}
    return subprocess.run([sys.executable, TOOL, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def run(world1, capfd, monkeypatch):
    """The tool's ``main`` through ``run_tool`` (what its entry point calls) in this process's one-rank world:
    (exit code, stdout, stderr) as a CompletedProcess."""
    from tools.pretrain import main

    def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        capfd.readouterr()
        code = run_tool(main, list(argv))
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess([TOOL, *argv], code, out, err)

    return _run


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error")]


@pytest.fixture(scope="module")
def shards(quickstart_shards):
    return quickstart_shards


def _train_args(images: str, texts: str, *extra: str) -> list[str]:
    return ["--model", "solo-tiny", "--data", f"{images}:0.7", f"{texts}:0.3", "--seq-length", "256",
            "--global-batch-size", "2", "--fp32", "--data-workers", "0", *extra]


def test_fp8_without_transformer_engine_is_one_line(shards, tmp_path, run):
    from megatron_solo.model.specs import transformer_engine_usable

    if transformer_engine_usable():
        pytest.skip("Transformer Engine is usable here: FP8 may run")
    out = run(*_train_args(*shards, "--fp8", "hybrid"), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert len(_errors(out.stderr)) == 1 and "Transformer Engine" in _errors(out.stderr)[0], out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.multiprocess
def test_layout_that_does_not_fit_the_world_is_one_line(shards, tmp_path):
    out = _run_process(*_train_args(*shards, "--tensor-parallel", "2"), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    (line,) = _errors(out.stderr)
    assert "world size 1 is not divisible by tensor_parallel x pipeline_parallel" in line


@pytest.mark.slow
def test_stop_without_save_says_nothing_was_saved(shards, tmp_path, run):
    # --sequence-parallel at TP1: nothing to split, the layout says so (no SP)
    out = run(*_train_args(*shards, "--train-steps", "3", "--exit-after-steps", "1", "--sequence-parallel"),
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "stopped early (no --save: nothing saved)" in out.stdout and "checkpoint saved" not in out.stdout
    assert "1 processes, layout TP1PP1DP1, " in out.stdout
    assert "layers: local spec, fp32" in out.stdout
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "clamped to 2" in warnings[0], out.stderr


@pytest.mark.slow
def test_rerun_of_a_finished_run_and_a_changed_blend(shards, tmp_path, run):
    images, texts = shards
    save = str(tmp_path / "ckpt")
    first = run(*_train_args(images, texts, "--train-steps", "2", "--save", save, "--recipe", "sft"), cwd=tmp_path)
    assert first.returncode == 0 and "done: iteration 2" in first.stdout, first.stderr
    assert json.loads(Path(save, "solo_model.json").read_text())["template"] == "chat"

    again = run(*_train_args(images, texts, "--train-steps", "2", "--save", save, "--recipe", "sft"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"the run is complete: iteration 2 of 2, checkpoint at {save}/iter_0000002" in again.stdout, again.stdout
    assert "step " not in again.stdout

    other = ["--model", "solo-tiny", "--data", f"{images}:0.5", f"{texts}:0.5", *_train_args(images, texts)[5:]]
    changed = run(*other, "--train-steps", "3", "--save", save, "--recipe", "sft", cwd=tmp_path)
    assert changed.returncode == 2, changed.stderr
    assert len(_errors(changed.stderr)) == 1 and "--allow-data-change" in _errors(changed.stderr)[0]
    assert "layers:" not in changed.stdout  # refused before the model is built

    allowed = run(*other, "--train-steps", "3", "--save", save, "--recipe", "sft", "--allow-data-change",
                   cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    assert "reading the new blend from pack 4 on" in allowed.stdout and "step 3/3" in allowed.stdout, allowed.stdout


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_data_loss_is_refused_before_the_model_then_reported(shards, tmp_path, run):
    # seq 48: no image block of the quick-start photos (57-73 tokens) fits, so every image sample is dropped
    args = _train_args(*shards)
    args[args.index("--seq-length") + 1] = "48"
    refused = run(*args, "--train-steps", "2", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    (line,) = _errors(refused.stderr)
    assert "max_drop_share 0.01" in line and "imagenet" in line and "layers:" not in refused.stdout

    tb = tmp_path / "tb"
    accepted = run(*args, "--train-steps", "2", "--max-drop-share", "1", "--eval-data", shards[1],
                    "--eval-interval", "1", "--eval-iters", "1", "--tensorboard-dir", str(tb), cwd=tmp_path)
    assert accepted.returncode == 0, accepted.stderr
    report = [x for x in accepted.stdout.splitlines() if x.startswith("data: ")]
    assert len(report) == 2 and "189 dropped" in report[0] and " 0 dropped" in report[1], accepted.stdout
    steps = [x for x in accepted.stdout.splitlines() if x.startswith("step ")]
    assert len(steps) == 2 and all("dropped 189 samples" in x and "val_loss " in x for x in steps), steps
    scalars = _scalars(tb)
    assert scalars["data/dropped_samples"] == [(0, 189.0)]
    assert [s for s, _ in scalars["val/loss"]] == [1, 2] and [s for s, _ in scalars["train/loss"]] == [1, 2]


def test_an_existing_folder_with_a_colon_in_its_name_is_a_path(tmp_path):
    folder = tmp_path / "run:2024"
    folder.mkdir()
    j = job("--data", str(folder), f"{folder}:3")
    assert [(d.path, d.weight) for d in j.data.datasets] == [(str(folder), 1.0), (str(folder), 3.0)]


@pytest.fixture
def small_disk(tmp_path):
    """A 20 MiB tmpfs mounted at tmp_path/disk (root only), unmounted afterwards."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_a_save_folder_that_cannot_be_written_is_one_line(shards, small_disk, tmp_path, run):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    refused = run(*_train_args(*shards, "--train-steps", "1", "--save", str(small_disk / "ckpt")), cwd=tmp_path)
    assert refused.returncode == 2 and "layers:" not in refused.stdout, refused.stderr  # before the model is built
    assert _errors(refused.stderr) == [f"error: --save {small_disk}/ckpt: cannot write checkpoints into "
                                       f"{small_disk} (Read-only file system)"], refused.stderr
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    for mode in ([], ["--async-save"]):  # a checkpoint of solo-tiny with its optimizer: about 60 MiB
        full = run(*_train_args(*shards, "--train-steps", "1", "--save", str(small_disk / "ckpt"), *mode), cwd=tmp_path)
        assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
        (line,) = [line for line in full.stderr.splitlines() if "error" in line.lower()]
        assert line.startswith(f"error: {small_disk}/ckpt/iter_0000001: cannot write the checkpoint ("), line
        assert f"MiB free on {small_disk}/ckpt (the file system is full); there is no checkpoint yet" in line
        assert not (small_disk / "ckpt" / "latest_checkpointed_iteration.txt").exists()
