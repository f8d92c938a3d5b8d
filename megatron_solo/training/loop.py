"""The pre-training / fine-tuning loop: check, build, resume, step, validate, log, checkpoint, handle preemption."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megatron_solo.checkpoint.metadata import META_FILE, write_metadata, write_run_files
from megatron_solo.checkpoint.state import TrainState, load_checkpoint, save_checkpoint
from megatron_solo.config.job import JobConfig
from megatron_solo.errors import UserInputError
from megatron_solo.training.startup import (
    RunSetupError,
    build_checked_loader,
    check_saved_model,
    describe_layers,
    job_model_config,
    overflow_lines,
    restore_data_position,
    saved_run,
)
from megatron_solo.vocab.tokenizers import tokenizer_for_vocab


@dataclass
class RunSummary:
    """What a finished (or preempted) run reports; losses only on the logging rank."""

    iteration: int
    total_steps: int = 0
    losses: list[float] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (iteration, validation loss)
    preempted: bool = False
    saved: bool = False  # the state at ``iteration`` is in a checkpoint
    checkpoint: str | None = None  # the newest checkpoint of the save folder
    complete: bool = False  # the save folder already held the finished run: nothing was done
    resumed_from: int | None = None
    is_log_rank: bool = False


def _log_rank() -> bool:
    from megatron.core import parallel_state as ps

    return (
        ps.is_pipeline_last_stage(ignore_virtual=True)
        and ps.get_tensor_model_parallel_rank() == 0
        and ps.get_data_parallel_rank() == 0
    )


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
    from megatron.core import parallel_state as ps

    from megatron_solo.model.builder import solo_provider
    from megatron_solo.model.chunks import build_model_chunks
    from megatron_solo.platform import init_distributed, init_parallel
    from megatron_solo.training.data_loss import DataLossTally
    from megatron_solo.training.ddp import wrap_ddp
    from megatron_solo.training.forward_step import solo_forward_step
    from megatron_solo.training.optimizer import build_optimizer, build_scheduler, schedule_warning
    from megatron_solo.training.preemption import PreemptionFlag
    from megatron_solo.training.progress import TrainLogger
    from megatron_solo.training.step import train_step
    from megatron_solo.training.validation import Validator

    train, parallel = job.train, job.parallel
    init_distributed()
    try:
        dp = init_parallel(parallel, seed=train.seed)
    except UserInputError:
        raise
    except ValueError as err:  # the layout does not fit the world, or sequence parallel without a GPU
        raise RunSetupError(f"parallel layout: {err}") from err
    num_microbatches = train.num_microbatches(dp)
    model_cfg = job_model_config(job)
    if train.seq_length > model_cfg.max_position_embeddings:
        raise RunSetupError(f"seq_length {train.seq_length} exceeds the model's max_position_embeddings "
                            f"{model_cfg.max_position_embeddings}")
    rank0 = TrainLogger(torch.distributed.get_rank() == 0, None, train.train_steps)  # start-up lines
    summary = RunSummary(iteration=0, total_steps=train.train_steps, is_log_rank=_log_rank())
    check_saved_model(train.save_dir, model_cfg)
    saved = saved_run(train.save_dir)
    if saved is not None and saved.note:
        rank0.info(saved.note)
    if saved is not None and saved.iteration >= train.train_steps:
        summary.iteration, summary.checkpoint, summary.saved, summary.complete = saved.iteration, saved.path, True, True
        return summary

    tok = _tokenizer_for(job, model_cfg)
    dp_rank = ps.get_data_parallel_rank()
    loader = build_checked_loader(job.data, train, model_cfg.patch_size, dp_rank, dp, "data")
    for line in overflow_lines(loader, "data"):
        rank0.info(line)
    if saved is not None and "data" in saved.state.get("extra", {}):
        note = restore_data_position(loader, saved.state["extra"]["data"], job.allow_data_change, train.save_dir)
        if note:
            rank0.info(note)
    validator = None
    if job.eval_data is not None:
        packs = train.eval_iters * train.global_batch_size
        eval_loader = build_checked_loader(job.eval_data, train, model_cfg.patch_size, dp_rank, dp, "eval data",
                                           limit=packs)
        validator = Validator(eval_loader, train.eval_iters, num_microbatches, train.seq_length,
                              train.micro_batch_size)
        for line in overflow_lines(eval_loader, "eval data"):
            rank0.info(line)
        if eval_loader.dataset.epoch_size(0) < packs:
            rank0.info(f"note: the eval data holds {eval_loader.dataset.epoch_size(0)} packs, fewer than the "
                       f"{packs} a validation reads ({train.eval_iters} x {train.global_batch_size}): some are read twice")
    tokens = train.micro_batch_size * train.seq_length // (parallel.tensor_parallel if parallel.sequence_parallel else 1)
    layers = describe_layers(model_cfg, train.bf16, tokens, parallel.tensor_parallel)
    world = torch.distributed.get_world_size()
    rank0.info(f"{job.model}: {world} processes, layout {parallel.describe(world)}, "
               f"{num_microbatches} micro-batches of {train.micro_batch_size} x {train.seq_length} per step")
    rank0.info(layers)
    warning = schedule_warning(train)
    if warning:
        rank0.info(warning, warning=True)

    provider = solo_provider(model_cfg, parallel, bf16=train.bf16, recompute=train.recompute)
    chunks = wrap_ddp(build_model_chunks(provider, parallel), parallel)
    optimizer = build_optimizer(chunks, train, parallel)
    scheduler = build_scheduler(optimizer, train)
    state = TrainState()
    if saved is not None:
        state = load_checkpoint(saved.path, chunks, optimizer, scheduler)
        summary.resumed_from, summary.checkpoint = state.iteration, saved.path
        if _log_rank():
            print(f"resumed from {train.save_dir} at iteration {state.iteration}", flush=True)
    elif job.init_from:
        load_checkpoint(job.init_from, chunks, load_rng=False)  # previous stage: weights only
        # The optimizer keeps its own fp32 copies of bf16 weights, taken when it was built: without
        # this, the first step would write the random initialisation back over the loaded weights.
        optimizer.reload_model_params()
    batches = iter(loader)

    if train.save_dir and torch.distributed.get_rank() == 0:
        _write_run_files(job, model_cfg, tok)
    logger = TrainLogger(_log_rank(), train.tensorboard_dir, train.train_steps)
    dropped = DataLossTally(loader.dataset)
    dropped.update(loader.consumed_packs)
    logger.data(state.iteration, dropped.samples, dropped.tokens)
    flag = PreemptionFlag()
    summary.iteration, saved_at, steps_here = state.iteration, saved.iteration if saved else None, 0
    try:
        while state.iteration < train.train_steps:
            start = time.perf_counter()
            micro = [next(batches) for _ in range(num_microbatches)]
            iters = [iter(micro) for _ in chunks]
            result = train_step(
                solo_forward_step, iters, chunks, optimizer, scheduler,
                num_microbatches=num_microbatches, seq_length=train.seq_length,
                micro_batch_size=train.micro_batch_size,
            )
            seconds = time.perf_counter() - start
            if dropped.update(loader.consumed_packs):
                logger.data(state.iteration + 1, dropped.samples, dropped.tokens)
            state.iteration += 1
            steps_here += 1
            state.consumed_samples += train.global_batch_size
            if result.loss is not None:
                summary.losses.append(result.loss)
            signalled = flag.agreed()
            last = state.iteration == train.train_steps
            val_loss = None
            if validator is not None and not signalled and (state.iteration % train.eval_interval == 0 or last):
                val_loss = validator.loss(chunks)
                if val_loss is not None:
                    summary.val_losses.append((state.iteration, val_loss))
            logger.step(
                state.iteration,
                {"loss": result.loss, "lr": optimizer.param_groups[0]["lr"], "grad_norm": result.grad_norm},
                tokens=train.global_batch_size * train.seq_length, seconds=seconds, val_loss=val_loss,
                dropped_samples=dropped.samples,
            )
            stop = signalled or (job.exit_after_steps is not None and steps_here >= job.exit_after_steps)
            if train.save_dir and (state.iteration % train.save_interval == 0 or last or stop):
                state.extra["data"] = loader.state_dict()
                summary.checkpoint = save_checkpoint(train.save_dir, state, chunks, optimizer, scheduler)
                saved_at = state.iteration
            if stop and not last:
                summary.preempted = True
                break
    finally:
        flag.restore()
        logger.close()
    summary.iteration = state.iteration
    summary.saved = saved_at == state.iteration
    torch.distributed.barrier()
    return summary
