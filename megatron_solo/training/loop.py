"""The pre-training / fine-tuning run in its phases: start-up checks, build, resume, step loop, end.

Each phase fills in the shared :class:`~megatron_solo.training.run.Run`; the step loop
(:mod:`megatron_solo.training.step_loop`) trains, validates, logs, checkpoints and handles preemption.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from megatron_solo.checkpoint.metadata import META_FILE, write_metadata, write_run_files
from megatron_solo.config.job import JobConfig
from megatron_solo.errors import UserInputError
from megatron_solo.training.run import Run, RunSummary, log_rank
from megatron_solo.training.startup import (
    RunSetupError,
    build_checked_loader,
    check_save_writable,
    check_saved_model,
    check_sequence_split,
    describe_layers,
    job_model_config,
    overflow_lines,
    restore_data_position,
    saved_run,
)
from megatron_solo.vocab.tokenizers import tokenizer_for_vocab

__all__ = ["RunSummary", "pretrain"]


def _tokenizer_for(job: JobConfig, model_cfg):
    """The SOLO tokenizer of this job, refused when it does not fit the model's vocabulary."""
    tok = tokenizer_for_vocab(job.tokenizer, model_cfg.vocab_size)
    tok.check_compatible(model_cfg.vocab_size, {"<vpatch>": model_cfg.vpatch_token_id})
    return tok


def _write_run_files(job: JobConfig, model_cfg, tok) -> None:
    """solo_model.json (with the prompt template) and the tokenizer beside the checkpoints."""
    save_dir = Path(job.train.save_dir)
    if not (save_dir / META_FILE).is_file():
        save_dir.mkdir(parents=True, exist_ok=True)
        write_metadata(save_dir, model_cfg, job.parallel, source="megatron_solo training", template=job.template)
    # a tokenizer named for this run wins over the one the previous stage's checkpoint carries
    write_run_files(save_dir, model_cfg, job.parallel, tok, job.init_from if job.tokenizer is None else None)


def pretrain(job: JobConfig) -> RunSummary:
    """Train SoloModel as ``job`` says; resumes from ``job.train.save_dir`` when it holds a checkpoint.

    Everything that can be checked without the model (a finished run, the tokenizer, the data and the
    saved data position, the layer implementation) is checked before the model is built. A process
    world this call starts is torn down when it fails, so the process exits cleanly with its error.
    """
    from megatron_solo.platform import teardown

    started = not torch.distributed.is_initialized()
    try:
        return _pretrain(job)
    except BaseException:
        if started:
            teardown()
        raise


def _pretrain(job: JobConfig) -> RunSummary:
    from megatron_solo.training.step_loop import StepLoop

    run = _start_up(job)
    if run.summary.complete:
        return run.summary
    _build_data(run)
    _build_model(run)
    _resume(run)
    StepLoop(run).run()
    return _end(run)


def _start_up(job: JobConfig) -> Run:
    """Start the process world and check what needs no data or model: layout, model, the save folder."""
    from megatron_solo.platform import init_distributed, init_parallel, resolve_sequence_parallel
    from megatron_solo.training.progress import TrainLogger
    from megatron_solo.training.tracking import check_wandb

    train = job.train
    check_wandb(train)  # on every rank, before any process group: a missing wandb stops all of them alike
    init_distributed()
    job = dataclasses.replace(job, parallel=resolve_sequence_parallel(job.parallel))
    try:
        dp = init_parallel(job.parallel, seed=train.seed)
    except UserInputError:
        raise
    except ValueError as err:  # the layout does not fit the world
        raise RunSetupError(f"parallel layout: {err}") from err
    num_microbatches = train.num_microbatches(dp)
    model_cfg = job_model_config(job)
    if train.seq_length > model_cfg.max_position_embeddings:
        raise RunSetupError(f"seq_length {train.seq_length} exceeds the model's max_position_embeddings "
                            f"{model_cfg.max_position_embeddings}")
    check_sequence_split(model_cfg, train, job.parallel)
    rank0 = TrainLogger(torch.distributed.get_rank() == 0, None, train.train_steps)  # start-up lines
    summary = RunSummary(iteration=0, total_steps=train.train_steps, is_log_rank=log_rank())
    check_save_writable(train.save_dir)
    check_saved_model(train.save_dir, model_cfg)
    saved = saved_run(train.save_dir)
    if saved is not None and saved.note:
        rank0.info(saved.note)
    if saved is not None and saved.iteration >= train.train_steps:
        summary.iteration, summary.checkpoint, summary.saved, summary.complete = saved.iteration, saved.path, True, True
    return Run(job, model_cfg, num_microbatches, dp, rank0, summary, saved)


def _build_data(run: Run) -> None:
    """The tokenizer, the training loader at the saved data position, the validator; the start-up report."""
    from megatron.core import parallel_state as ps

    from megatron_solo.training.optimizer import schedule_warning

    job, train, rank0 = run.job, run.job.train, run.rank0
    run.tokenizer = _tokenizer_for(job, run.model_cfg)
    dp_rank = ps.get_data_parallel_rank()
    run.loader = build_checked_loader(job.data, train, run.model_cfg.patch_size, dp_rank, run.data_parallel, "data")
    for line in overflow_lines(run.loader, "data"):
        rank0.info(line)
    if run.saved is not None and run.saved.state.data is not None:
        note = restore_data_position(run.loader, run.saved.state.data, job.allow_data_change, train.save_dir)
        if note:
            rank0.info(note)
    if job.eval_data is not None:
        run.validator = _build_validator(run, dp_rank)
    parallel = job.parallel
    tokens = train.micro_batch_size * train.seq_length // (parallel.tensor_parallel if parallel.sequence_parallel else 1)
    layers = describe_layers(run.model_cfg, train.bf16, tokens, parallel.tensor_parallel,
                             parallel.sequence_parallel)
    world = torch.distributed.get_world_size()
    rank0.info(f"{job.model}: {world} processes, layout {parallel.describe(world)}, "
               f"{run.num_microbatches} micro-batches of {train.micro_batch_size} x {train.seq_length} per step")
    rank0.info(layers)
    warning = schedule_warning(train)
    if warning:
        rank0.info(warning, warning=True)


def _build_validator(run: Run, dp_rank: int):
    """The Validator over the job's eval data (the same packs every validation), with its start-up lines."""
    from megatron_solo.training.validation import Validator

    train = run.job.train
    packs = train.eval_iters * train.global_batch_size
    eval_loader = build_checked_loader(run.job.eval_data, train, run.model_cfg.patch_size, dp_rank,
                                       run.data_parallel, "eval data", limit=packs)
    for line in overflow_lines(eval_loader, "eval data"):
        run.rank0.info(line)
    if eval_loader.dataset.epoch_size(0) < packs:
        run.rank0.info(f"note: the eval data holds {eval_loader.dataset.epoch_size(0)} packs, fewer than the "
                       f"{packs} a validation reads ({train.eval_iters} x {train.global_batch_size}): some are "
                       "read twice")
    return Validator(eval_loader, train.eval_iters, run.num_microbatches, train.seq_length, train.micro_batch_size)


def _build_model(run: Run) -> None:
    """Model chunks in megatron-core's DDP, the optimizer and the learning-rate schedule."""
    from megatron_solo.model.builder import solo_provider
    from megatron_solo.model.chunks import build_model_chunks
    from megatron_solo.training.ddp import wrap_ddp
    from megatron_solo.training.optimizer import build_optimizer, build_scheduler

    train, parallel = run.job.train, run.job.parallel
    provider = solo_provider(run.model_cfg, parallel, bf16=train.bf16, recompute=train.recompute)
    run.chunks = wrap_ddp(build_model_chunks(provider, parallel), parallel)
    run.optimizer = build_optimizer(run.chunks, train, parallel)
    run.scheduler = build_scheduler(run.optimizer, train)


def _resume(run: Run) -> None:
    """Load the save folder's checkpoint (or the previous stage's weights), then write the run files."""
    from megatron_solo.checkpoint.state import load_checkpoint
    from megatron_solo.training.profiling import profile_warning

    job = run.job
    if run.saved is not None:
        run.state = load_checkpoint(run.saved.path, run.chunks, run.optimizer, run.scheduler)
        run.summary.resumed_from, run.summary.checkpoint = run.state.iteration, run.saved.path
        if log_rank():
            print(f"resumed from {job.train.save_dir} at iteration {run.state.iteration}", flush=True)
    elif job.init_from:
        load_checkpoint(job.init_from, run.chunks, load_rng=False)  # previous stage: weights only
        # The optimizer keeps its own fp32 copies of bf16 weights, taken when it was built: without
        # this, the first step would write the random initialisation back over the loaded weights.
        run.optimizer.reload_model_params()
    if job.train.save_dir and torch.distributed.get_rank() == 0:
        _write_run_files(job, run.model_cfg, run.tokenizer)
    warning = profile_warning(job.train, torch.distributed.get_world_size(), run.state.iteration)
    if warning:
        run.rank0.info(warning, warning=True)


def _end(run: Run) -> RunSummary:
    """The summary of the run, once every rank has finished."""
    run.summary.iteration = run.state.iteration
    torch.distributed.barrier()
    return run.summary
