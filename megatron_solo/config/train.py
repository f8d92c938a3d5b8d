"""Optimisation and training-loop settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_solo.errors import UserInputError


@dataclass
class OptimConfig:
    """AdamW with warm-up and decay; SOLO's pre-training values are the defaults."""

    optimizer: str = "adam"  # or "sgd" (used by tests: its update is the gradient itself)
    lr: float = 5e-5
    min_lr: float = 5e-6
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    warmup_steps: int = 200
    decay_style: str = "cosine"


@dataclass
class TrainConfig:
    """Batch sizes, run length, precision, checkpoint and log locations."""

    micro_batch_size: int = 1
    global_batch_size: int = 128
    seq_length: int = 32768
    train_steps: int = 1525
    seed: int = 1234
    bf16: bool = True
    recompute: bool = False
    save_dir: str | None = None
    save_interval: int = 100
    tensorboard_dir: str | None = None
    # Validation (when the job has eval data): every eval_interval steps and at the last step, over
    # eval_iters global batches of the eval data, the same packs each time.
    eval_interval: int = 100
    eval_iters: int = 10
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        for name in ("micro_batch_size", "global_batch_size", "seq_length", "save_interval", "eval_interval",
                     "eval_iters"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.train_steps < 0:
            raise UserInputError(f"train_steps must not be negative, got {self.train_steps}")
        if self.optim.warmup_steps < 0:
            raise UserInputError(f"warmup_steps must not be negative, got {self.optim.warmup_steps}")

    def num_microbatches(self, data_parallel: int) -> int:
        """Micro-batches per step on one data-parallel rank; UserInputError if the batch does not divide."""
        per_step = self.micro_batch_size * data_parallel
        if self.global_batch_size % per_step:
            raise UserInputError(
                f"global_batch_size {self.global_batch_size} is not divisible by "
                f"micro_batch_size x data_parallel = {self.micro_batch_size} x {data_parallel}"
            )
        return self.global_batch_size // per_step
