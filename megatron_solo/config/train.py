"""Optimisation and training-loop settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from megatron_solo.config.choices import check_choices
from megatron_solo.config.cli import cli
from megatron_solo.errors import UserInputError


def step_range(text: str) -> tuple[int, int]:
    """``A:B`` (two step numbers) as (A, B); a ``cli(parse=...)`` reader."""
    first, sep, last = text.partition(":")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        raise UserInputError(f"expected A:B (two step numbers), got {text!r}")
    return int(first), int(last)


@dataclass
class OptimConfig:
    """AdamW with warm-up and decay; SOLO's pre-training values are the defaults."""

    optimizer: Literal["adam", "sgd"] = "adam"  # sgd: for tests, its update is the gradient itself
    lr: float = 5e-5  # peak learning rate, reached after the warm-up
    min_lr: float = 5e-6  # learning rate at the end of the decay
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0  # largest global gradient norm (0: no clipping)
    warmup_steps: int = 200  # steps of linear warm-up from 0
    decay_style: Literal["cosine", "linear", "constant"] = "cosine"  # learning-rate decay after the warm-up

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass
class TrainConfig:
    """Batch sizes, run length, precision, checkpoint and log locations."""

    micro_batch_size: int = 1  # packed sequences per forward pass on one rank
    global_batch_size: int = 128  # packed sequences per optimizer step, over all data-parallel ranks
    seq_length: int = 32768  # tokens per packed sequence
    train_steps: int = 1525  # optimizer steps of the whole run
    seed: int = 1234  # weights, data order and dropout
    bf16: bool = field(default=True, metadata=cli("--fp32"))  # --fp32: train in fp32 instead of bf16
    recompute: bool = False  # full activation recompute
    # checkpoint folder; the run resumes from it when it holds one
    save_dir: str | None = field(default=None, metadata=cli("--save"))
    save_interval: int = 100  # steps between checkpoints (one is also written at the end)
    tensorboard_dir: str | None = None  # tensorboard events and loss_curve.png
    # Validation (when the job has eval data): every eval_interval steps and at the last step, over
    # eval_iters global batches of the eval data, the same packs each time.
    eval_interval: int = 100  # validate every this many steps and at the last step
    eval_iters: int = 10  # global batches of the eval data per validation
    # a torch.profiler trace of steps A to B (counted from 1, both included) on the ranks of
    # --profile-ranks into TENSORBOARD_DIR/profile (tensorboard's profiler plugin, chrome://tracing); on a GPU
    # also a CUDA memory snapshot of those steps (pytorch.org/memory_viz)
    profile_steps: tuple[int, int] | None = field(default=None, metadata=cli(metavar="A:B", parse=step_range))
    # global ranks that record --profile-steps (default: rank 0)
    profile_ranks: list[int] = field(default_factory=lambda: [0])
    wandb_project: str | None = None  # also log the scalars to this Weights & Biases project (needs wandb)
    wandb_run_name: str | None = None  # the W&B run's name (default: one W&B picks)
    # A step whose loss or gradient norm is NaN/Inf on any rank: "stop" (no update, nothing saved, the run
    # ends naming the step's data) or "skip" (no update, the run goes on) up to max_skipped_steps
    on_nonfinite: Literal["stop", "skip"] = "stop"
    max_skipped_steps: int = 10  # steps a run may leave without an update before it stops
    # A step loss above median + spike_mad_factor x MAD of the last spike_window losses (after the learning-rate
    # warm-up), or from step 1 above 2 x ln(vocabulary size) (a diverging run): "warn" (log it with the step's
    # data), "skip" (no update), "rewind" (back to the last checkpoint, the data read since then skipped) or
    # "off"; skips and rewinds count against max_skipped_steps
    on_spike: Literal["off", "warn", "skip", "rewind"] = "warn"
    spike_window: int = 50  # recent step losses the spike detector's median and MAD are taken over
    spike_mad_factor: float = 6.0  # how many MADs above the median a spike is
    # write checkpoints in the background (megatron-core's async save): training goes on while they are written
    async_save: bool = False
    save_interval_minutes: float | None = None  # also checkpoint when this many minutes passed since the last one
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("micro_batch_size", "global_batch_size", "seq_length", "save_interval", "eval_interval",
                     "eval_iters"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.train_steps < 0:
            raise UserInputError(f"train_steps must not be negative, got {self.train_steps}")
        if self.optim.warmup_steps < 0:
            raise UserInputError(f"warmup_steps must not be negative, got {self.optim.warmup_steps}")
        if self.max_skipped_steps < 0:
            raise UserInputError(f"max_skipped_steps must not be negative, got {self.max_skipped_steps}")
        self._check_spike()
        if self.save_interval_minutes is not None and not self.save_interval_minutes > 0:
            raise UserInputError(f"save_interval_minutes must be positive, got {self.save_interval_minutes}")
        self._check_profile()

    def _check_spike(self) -> None:
        """The spike window holds at least 3 losses and its factor is positive; rewind needs checkpoints."""
        if self.spike_window < 3:
            raise UserInputError(f"spike_window must be at least 3, got {self.spike_window}")
        if not self.spike_mad_factor > 0:
            raise UserInputError(f"spike_mad_factor must be positive, got {self.spike_mad_factor}")
        if self.on_spike == "rewind" and not self.save_dir:
            raise UserInputError("on_spike rewind goes back to the last checkpoint: give save_dir (--save)")

    def _check_profile(self) -> None:
        """The profiled steps are a range of steps, written where tensorboard's files are."""
        if self.profile_steps is None:
            return
        first, last = self.profile_steps
        if not 1 <= first <= last:
            raise UserInputError(f"profile_steps {first}:{last}: expected A:B with 1 <= A <= B")
        if first > self.train_steps:
            raise UserInputError(f"profile_steps {first}:{last} starts after the last step (train_steps "
                                 f"{self.train_steps})")
        if not self.tensorboard_dir:
            raise UserInputError("profile_steps writes its trace into the tensorboard folder: give tensorboard_dir")
        if any(r < 0 for r in self.profile_ranks):
            raise UserInputError(f"profile_ranks must not be negative, got {self.profile_ranks}")

    def num_microbatches(self, data_parallel: int) -> int:
        """Micro-batches per step on one data-parallel rank; UserInputError if the batch does not divide."""
        per_step = self.micro_batch_size * data_parallel
        if self.global_batch_size % per_step:
            raise UserInputError(
                f"global_batch_size {self.global_batch_size} is not divisible by "
                f"micro_batch_size x data_parallel = {self.micro_batch_size} x {data_parallel}"
            )
        return self.global_batch_size // per_step
