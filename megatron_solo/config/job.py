"""One training job: model, parallel layout, optimisation, data, checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_solo.config.data import DataConfig
from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.config.train import TrainConfig


@dataclass
class JobConfig:
    """Everything :func:`megatron_solo.training.loop.pretrain` needs."""

    model: str = "solo-small"
    model_overrides: dict = field(default_factory=dict)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # Weights of the previous stage (a checkpoint directory): loaded with a fresh
    # optimizer and schedule. Ignored when save_dir already holds a checkpoint (resume).
    init_from: str | None = None
    # SentencePiece model of the tokenizer the shards were made with (default: Mistral's, from
    # mistral-common); checked against the model and written beside the checkpoints for export.
    tokenizer: str | None = None
    # Stop (after checkpointing) once this many steps ran in this process; None: run to train_steps.
    exit_after_steps: int | None = None
