"""What the phases of one training run share: the run's parts as they are built, and what it reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from megatron_solo.checkpoint.state import TrainState
from megatron_solo.config.job import JobConfig


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


@dataclass
class Run:
    """One run's parts, filled in phase by phase (start-up checks, build, resume) for the step loop."""

    job: JobConfig
    model_cfg: Any  # SoloModelConfig
    num_microbatches: int
    data_parallel: int
    rank0: Any  # TrainLogger of rank 0, for start-up lines
    summary: RunSummary
    saved: Any = None  # startup.SavedRun of the save folder, None without one
    tokenizer: Any = None
    loader: Any = None  # the training PackedDataLoader
    validator: Any = None  # validation.Validator, None without eval data
    chunks: list = field(default_factory=list)
    optimizer: Any = None
    scheduler: Any = None
    state: TrainState = field(default_factory=TrainState)


def log_rank() -> bool:
    """Whether this rank reports the run (last pipeline stage, first tensor- and data-parallel rank)."""
    from megatron.core import parallel_state as ps

    return (
        ps.is_pipeline_last_stage(ignore_virtual=True)
        and ps.get_tensor_model_parallel_rank() == 0
        and ps.get_data_parallel_rank() == 0
    )
