"""megatron-core optimizer (distributed when configured) and its learning-rate schedule."""

from __future__ import annotations

from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.config.train import TrainConfig


def build_optimizer(chunks: list, train: TrainConfig, parallel: ParallelConfig):
    """AdamW over the DDP-wrapped chunks, sharded over data parallel when asked."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    o = train.optim
    config = OptimizerConfig(
        optimizer=o.optimizer,
        sgd_momentum=0.0,
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=train.bf16,
        params_dtype=chunks[0].config.params_dtype,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
    )
    return get_megatron_optimizer(config, chunks)


# Fewer steps than this leave no room for a warm-up and a decay: the run can barely learn.
MIN_SCHEDULE_STEPS = 10


def effective_warmup(train: TrainConfig) -> int:
    """Warm-up steps the schedule uses: clamped below the run's length so the peak is reached."""
    return min(train.optim.warmup_steps, max(train.train_steps - 1, 0))


def schedule_warning(train: TrainConfig) -> str | None:
    """One line saying why this run's schedule will hardly train, or None when it is sound."""
    o, steps = train.optim, train.train_steps
    warm = effective_warmup(train)
    problems = []
    if steps == 0:
        return None
    if o.warmup_steps >= steps:
        problems.append(f"warm-up ({o.warmup_steps} steps) is not shorter than the run ({steps} steps): clamped "
                        f"to {warm}, so the learning rate reaches {o.lr:g} only at the last step")
    elif 2 * o.warmup_steps >= steps:
        problems.append(f"warm-up ({o.warmup_steps} steps) takes at least half of the run ({steps} steps)")
    if steps < MIN_SCHEDULE_STEPS:
        problems.append(f"the run is only {steps} step{'s' * (steps > 1)}, too short for a warm-up and a {o.decay_style} decay")
    if not problems:
        return None
    return "warning: " + "; ".join(problems) + " (set --warmup-steps / --train-steps, or a --recipe for this model)"


def build_scheduler(optimizer, train: TrainConfig):
    """Warm-up then cosine (or linear/constant) decay to ``min_lr``, stepped once per iteration."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    o = train.optim
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=effective_warmup(train),
        lr_decay_steps=max(train.train_steps, 1),
        lr_decay_style=o.decay_style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=max(train.train_steps, 1),
        wd_incr_style="constant",
    )
