"""Workers for the spike-policy and asynchronous-checkpoint tests (importable by spawned processes)."""

from __future__ import annotations

import contextlib
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

    forward = F.solo_forward_step if spike_at is None else _spiking_forward_step(spike_at, micro_batches=4)
    with T.patched(F, "solo_forward_step", forward):
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


def _slow_writer(iteration: int, on_rank: int, seconds: float, marker: str | None, usr1: bool,
                 group: str | None = None):
    """megatron-core's background shard writer, patched: on ``on_rank``, the write of ``iter_<iteration>`` first
    sends the trainer SIGUSR1 when ``usr1`` (or signal ``group``, e.g. "SIGTERM", to the whole process group, as
    Slurm signals a job), leaves ``marker``, and sleeps ``seconds``."""
    import torch
    from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync

    real = FileSystemWriterAsync.write_preloaded_data_multiproc
    trainer = os.getpid()

    def write(transform_list, use_msc, rank, write_buckets, results_queue):
        folder = str(write_buckets[0][0]) if write_buckets else ""
        if f"iter_{iteration:07d}" in folder and torch.distributed.get_rank() == on_rank:
            if usr1:
                os.kill(trainer, signal.SIGUSR1)
            if group:
                os.killpg(0, signal.Signals[group])
            if marker:  # after the signal: a marker seen means the signal is sent
                Path(f"{marker}.{on_rank}").write_text(folder)
            time.sleep(seconds)
        return real(transform_list, use_msc, rank, write_buckets, results_queue)

    return T.patched(FileSystemWriterAsync, "write_preloaded_data_multiproc", staticmethod(write))


def _signal_after_latest(iteration: int, save_dir: str, group: str):
    """solo_forward_step that, on rank 0, sends signal ``group`` to the whole process group once, in the first
    step that sees ``iter_<iteration>`` the latest checkpoint: between two writes."""
    import torch

    from megatron_solo.checkpoint.layout import latest_iteration
    from megatron_solo.training import forward_step as F

    real, sent = F.solo_forward_step, [torch.distributed.get_rank() != 0]

    def step(data_iterator, model):
        if not sent[0] and latest_iteration(save_dir) == iteration:
            sent[0] = True
            os.killpg(0, signal.Signals[group])
        return real(data_iterator, model)

    return step


def _after_the_signal(iteration: int, sent: Path, micro_batches: int):
    """solo_forward_step whose steps after ``iteration`` first wait (up to 300 s) for ``sent`` to exist.

    The slowed write leaves ``sent`` once it has sent its USR1: the signal then lands during the step
    after the save, not one or two steps later on a loaded machine.
    """
    from megatron_solo.training import forward_step as F

    real, calls = F.solo_forward_step, [0]

    def step(data_iterator, model):
        calls[0] += 1
        deadline = time.monotonic() + 300
        while calls[0] > iteration * micro_batches and not sent.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return real(data_iterator, model)

    return step


def run_async_job(images: str, texts: str, save_dir: str, steps: int, slow: dict | None, out: str,
                  train: dict) -> None:
    """Worker (DP2): small_job with --async-save, one rank's write of one checkpoint slowed; records the outcome.

    When the slowed write sends a signal and leaves a marker, the steps after its save wait for the marker.
    ``slow`` with "after_latest" instead signals the process group between two writes.
    """
    import torch

    from megatron_solo.training import forward_step as F
    from megatron_solo.training.loop import pretrain

    job = guarded_job(images, texts, save_dir, steps, None, async_save=True, **train)
    micro = job.train.global_batch_size // (job.train.micro_batch_size * torch.distributed.get_world_size())
    with contextlib.ExitStack() as patches:
        if slow is not None and "after_latest" in slow:
            patches.enter_context(T.patched(F, "solo_forward_step",
                                            _signal_after_latest(slow["after_latest"], save_dir, slow["group"])))
        elif slow is not None:
            patches.enter_context(_slow_writer(**slow))
        if slow is not None and (slow.get("usr1") or slow.get("group")) and slow.get("marker"):
            gate = _after_the_signal(slow["iteration"], Path(f"{slow['marker']}.{slow['on_rank']}"), micro)
            patches.enter_context(T.patched(F, "solo_forward_step", gate))
        summary = pretrain(job)
    if torch.distributed.get_rank() == 0:
        _record(out, summary, save_dir)
