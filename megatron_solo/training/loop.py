"""The pre-training / fine-tuning loop: build, resume, step, log, checkpoint, handle preemption."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from megatron_solo.checkpoint.layout import latest_iteration
from megatron_solo.checkpoint.metadata import write_run_files
from megatron_solo.checkpoint.state import TrainState, load_checkpoint, save_checkpoint
from megatron_solo.config.job import JobConfig
from megatron_solo.config.model import model_preset
from megatron_solo.vocab.tokenizers import tokenizer_for_vocab


@dataclass
class RunSummary:
    """What a finished (or preempted) run reports; losses only on the logging rank."""

    iteration: int
    losses: list[float] = field(default_factory=list)
    preempted: bool = False
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


def pretrain(job: JobConfig) -> RunSummary:
    """Train SoloModel as ``job`` says; resumes from ``job.train.save_dir`` when it holds a checkpoint."""
    from megatron.core import parallel_state as ps

    from megatron_solo.data.loader import build_data_loader
    from megatron_solo.model.builder import solo_provider
    from megatron_solo.model.chunks import build_model_chunks
    from megatron_solo.platform import init_distributed, init_parallel
    from megatron_solo.training.ddp import wrap_ddp
    from megatron_solo.training.forward_step import solo_forward_step
    from megatron_solo.training.optimizer import build_optimizer, build_scheduler
    from megatron_solo.training.preemption import PreemptionFlag
    from megatron_solo.training.progress import TrainLogger
    from megatron_solo.training.step import train_step

    train, parallel = job.train, job.parallel
    init_distributed()
    dp = init_parallel(parallel, seed=train.seed)
    num_microbatches = train.num_microbatches(dp)
    model_cfg = model_preset(job.model, **job.model_overrides)
    if train.seq_length > model_cfg.max_position_embeddings:
        raise ValueError(
            f"seq_length {train.seq_length} exceeds the model's max_position_embeddings "
            f"{model_cfg.max_position_embeddings}"
        )
    if torch.distributed.get_rank() == 0:
        world = torch.distributed.get_world_size()
        print(f"{job.model}: {world} processes, layout {parallel.describe(world)}, "
              f"{num_microbatches} micro-batches of {train.micro_batch_size} x {train.seq_length} per step", flush=True)
    tok = _tokenizer_for(job, model_cfg)
    provider = solo_provider(model_cfg, parallel, bf16=train.bf16, recompute=train.recompute)
    chunks = wrap_ddp(build_model_chunks(provider, parallel), parallel)
    optimizer = build_optimizer(chunks, train, parallel)
    scheduler = build_scheduler(optimizer, train)

    state, resumed = TrainState(), None
    if train.save_dir and latest_iteration(train.save_dir) is not None:
        state = load_checkpoint(train.save_dir, chunks, optimizer, scheduler)
        resumed = state.iteration
        if _log_rank():
            print(f"resumed from {train.save_dir} at iteration {resumed}", flush=True)
    elif job.init_from:
        load_checkpoint(job.init_from, chunks, load_rng=False)  # previous stage: weights only

    loader = build_data_loader(job.data, train.seq_length, train.micro_batch_size, model_cfg.patch_size,
                               rank=ps.get_data_parallel_rank(), world_size=dp)
    if "data" in state.extra:
        loader.load_state_dict(state.extra["data"])
    batches = iter(loader)

    if train.save_dir and torch.distributed.get_rank() == 0:
        write_run_files(train.save_dir, model_cfg, parallel, tok, job.init_from)
    logger = TrainLogger(_log_rank(), train.tensorboard_dir, train.train_steps)
    flag = PreemptionFlag()
    summary = RunSummary(iteration=state.iteration, resumed_from=resumed, is_log_rank=_log_rank())
    steps_here = 0
    try:
        while state.iteration < train.train_steps:
            micro = [next(batches) for _ in range(num_microbatches)]
            iters = [iter(micro) for _ in chunks]
            result = train_step(
                solo_forward_step, iters, chunks, optimizer, scheduler,
                num_microbatches=num_microbatches, seq_length=train.seq_length,
                micro_batch_size=train.micro_batch_size,
            )
            state.iteration += 1
            steps_here += 1
            state.consumed_samples += train.global_batch_size
            if result.loss is not None:
                summary.losses.append(result.loss)
            logger.step(
                state.iteration,
                {"loss": result.loss, "lr": optimizer.param_groups[0]["lr"], "grad_norm": result.grad_norm},
                tokens=train.global_batch_size * train.seq_length,
            )
            stop = flag.agreed() or (job.exit_after_steps is not None and steps_here >= job.exit_after_steps)
            due = state.iteration % train.save_interval == 0 or state.iteration == train.train_steps
            if train.save_dir and (due or stop):
                state.extra["data"] = loader.state_dict()
                save_checkpoint(train.save_dir, state, chunks, optimizer, scheduler)
            if stop:
                summary.preempted = True
                break
    finally:
        flag.restore()
        logger.close()
    summary.iteration = state.iteration
    torch.distributed.barrier()
    return summary
