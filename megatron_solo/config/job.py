"""One training job: model, parallel layout, optimisation, data, checkpoints."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

from megatron_solo.config.choices import check_choices
from megatron_solo.config.data import DataConfig
from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.config.train import TrainConfig
from megatron_solo.errors import UserInputError

# The prompt templates a model is trained with: plain text (pre-training) or "chat", SOLO's
# [INST] ... [/INST] (instruction tuning).
Template = Literal["plain", "chat"]
TEMPLATES: tuple[str, ...] = typing.get_args(Template)
PLAIN_TEMPLATE, CHAT_TEMPLATE = TEMPLATES


def recorded_template(meta: dict) -> str:
    """The prompt template a model's metadata records (solo_model.json, solo_export.json); plain when none."""
    return meta.get("template", PLAIN_TEMPLATE)


@dataclass
class JobConfig:
    """Everything :func:`megatron_solo.training.loop.pretrain` needs."""

    model: str = "solo-small"  # a model preset (config/model.py)
    # SoloModelConfig fields over the preset's, e.g. {"num_layers": 2}
    model_overrides: dict = field(default_factory=dict)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # Held-out data for the validation loss (TrainConfig.eval_interval / eval_iters); None: no validation.
    eval_data: DataConfig | None = None
    # Weights of the previous stage (a checkpoint directory): loaded with a fresh
    # optimizer and schedule. Ignored when save_dir already holds a checkpoint (resume).
    init_from: str | None = None
    # SentencePiece model of the tokenizer the shards were made with, checked against the model and written
    # beside the checkpoints for export (default: the init_from checkpoint's, else mistral-common's Mistral one).
    tokenizer: str | None = None
    # Stop (after checkpointing) once this many steps ran in this process; None: run to train_steps.
    exit_after_steps: int | None = None
    # Resume from a checkpoint whose data blend differs from this job's: the new blend's packs are read
    # from the checkpoint's position (its count of consumed packs), not from the start.
    allow_data_change: bool = False
    # The prompt template the trained model expects ("chat": SOLO's [INST] ... [/INST]), recorded in
    # solo_model.json for export and generation.
    template: Template = PLAIN_TEMPLATE

    def __post_init__(self) -> None:
        check_choices(self)
        if self.exit_after_steps is not None and self.exit_after_steps < 1:
            raise UserInputError(f"exit_after_steps must be at least 1, got {self.exit_after_steps}")
