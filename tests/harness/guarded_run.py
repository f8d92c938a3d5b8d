"""Workers for the spike-policy and asynchronous-checkpoint tests (importable by spawned processes)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path

from tests.harness import training as T

SPIKE_FACTOR = 30.0  # the injected spike multiplies one step's losses (and gradients) by this


def guarded_job(images: str, texts: str, save_dir: str, steps: int, exit_after: int | None, **train):
    """small_job (global batch 4, lr warm-up 1 step) with these TrainConfig fields replaced."""
    job = T.small_job(images, texts, save_dir, steps, exit_after)
    return dataclasses.replace(job, train=dataclasses.replace(job.train, **train))


def _spiking_forward_step(at_step: int, micro_batches: int):
    """solo_forward_step whose micro-batches of optimizer step ``at_step`` (counted from 1) give SPIKE_FACTOR x loss."""
    from megatron_solo.training import forward_step as F

    real, calls = F.solo_forward_step, [0]

    def step(data_iterator, model):
        output, loss_func = real(data_iterator, model)
        calls[0] += 1
        if (calls[0] - 1) // micro_batches + 1 == at_step:
            output = output * SPIKE_FACTOR
        return output, loss_func

    return step


def _record(out: str, summary, save_dir: str | None) -> None:
    from megatron_solo.checkpoint.layout import latest_iteration

    record = {"losses": summary.losses, "iteration": summary.iteration, "resumed_from": summary.resumed_from,
              "preempted": summary.preempted}
    if save_dir:  # what the save folder holds the moment the run returns
        record["latest"] = latest_iteration(save_dir)
        record["folders"] = sorted(p.name for p in Path(save_dir).iterdir() if p.name.startswith("iter_"))
    Path(out).write_text(json.dumps(record))


def run_spike_job(images: str, texts: str, save_dir: str | None, steps: int, spike_at: int | None,
                  exit_after: int | None, out: str, train: dict) -> None:
    """Worker (1 process, 4 micro-batches a step): optionally a spike at step ``spike_at``; records the outcome."""
    from megatron_solo.training import forward_step as F
    from megatron_solo.training.loop import pretrain

    if spike_at is not None:
        F.solo_forward_step = _spiking_forward_step(spike_at, micro_batches=4)
    summary = pretrain(guarded_job(images, texts, save_dir, steps, exit_after, **train))
    _record(out, summary, save_dir)


def weights_of(images: str, texts: str, checkpoints: list[str], outs: list[str]) -> None:
    """Worker (1 process): the model weights of each checkpoint folder (or save root) into a safetensors file."""
    from safetensors.torch import save_file

    from megatron_solo.checkpoint.state import load_checkpoint
    from megatron_solo.config import ParallelConfig, model_preset
    from megatron_solo.model.builder import solo_provider
    from megatron_solo.model.chunks import build_model_chunks
    from megatron_solo.platform import init_parallel

    job = T.small_job(images, texts, checkpoints[0], 1, None)
    init_parallel(ParallelConfig(), seed=1)
    chunks = build_model_chunks(solo_provider(model_preset(job.model, **job.model_overrides), ParallelConfig()),
                                ParallelConfig())
    for ckpt, out in zip(checkpoints, outs):
        load_checkpoint(ckpt, chunks, load_rng=False)
        save_file({k: v.detach().clone() for k, v in chunks[0].state_dict().items() if "_extra_state" not in k}, out)


def _slow_writer(iteration: int, on_rank: int, seconds: float, marker: str | None, usr1: bool):
    """Patch megatron-core's background shard writer: on ``on_rank``, the write of ``iter_<iteration>`` first
    leaves ``marker``, sends the trainer SIGUSR1 when ``usr1``, and sleeps ``seconds``."""
    import torch
    from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync

    real = FileSystemWriterAsync.write_preloaded_data_multiproc
    trainer = os.getpid()

    def write(transform_list, use_msc, rank, write_buckets, results_queue):
        folder = str(write_buckets[0][0]) if write_buckets else ""
        if f"iter_{iteration:07d}" in folder and torch.distributed.get_rank() == on_rank:
            if marker:
                Path(f"{marker}.{on_rank}").write_text(folder)
            if usr1:
                os.kill(trainer, signal.SIGUSR1)
            time.sleep(seconds)
        return real(transform_list, use_msc, rank, write_buckets, results_queue)

    FileSystemWriterAsync.write_preloaded_data_multiproc = staticmethod(write)


def run_async_job(images: str, texts: str, save_dir: str, steps: int, slow: dict | None, out: str,
                  train: dict) -> None:
    """Worker (DP2): small_job with --async-save, one rank's write of one checkpoint slowed; records the outcome."""
    import torch

    from megatron_solo.training.loop import pretrain

    if slow is not None:
        _slow_writer(**slow)
    summary = pretrain(guarded_job(images, texts, save_dir, steps, None, async_save=True, **train))
    if torch.distributed.get_rank() == 0:
        _record(out, summary, save_dir)
