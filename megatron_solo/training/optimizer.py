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


def build_scheduler(optimizer, train: TrainConfig):
    """Warm-up then cosine (or linear/constant) decay to ``min_lr``, stepped once per iteration."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    o = train.optim
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=min(o.warmup_steps, max(train.train_steps - 1, 0)),
        lr_decay_steps=max(train.train_steps, 1),
        lr_decay_style=o.decay_style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=max(train.train_steps, 1),
        wd_incr_style="constant",
    )
