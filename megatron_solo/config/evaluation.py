"""What one evaluation run measures, on which model, and how (tools/evaluate.py's options)."""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_solo.config.parallel import ParallelConfig


@dataclass
class EvalConfig:
    """What to evaluate, on which model, and how."""

    checkpoint: str | None = None  # Megatron save root or iter_N folder
    hf: str | None = None  # folder written by tools/export_to_hf.py
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # Megatron layout (DP: the rest)
    dtype: str = "float32"
    val_data: list[str] = field(default_factory=list)  # held-out shard folders, each PATH or PATH:NAME
    classify: str | None = None  # held-out classification shards
    class_names: str | None = None  # default: the file named in the shards' preprocess_config.json
    caption_template: str | None = None  # default: the shards' preprocess_config.json, else "{}"
    # training shards of the classification set: adds logistic regression on the same pixels beside the model
    baseline_train: str | None = None
    mcq: str | None = None  # JSONL of {"image", "question", "options", "answer"}
    mcq_mode: str = "both"  # loglik, generate or both
    template: str | None = None  # plain or chat; default: the model's solo_model.json "template", else plain
    caption_images: list[str] = field(default_factory=list)
    max_samples: int | None = None  # per source and task
    max_side: int | None = None  # longest image side for MCQ / caption images (default: the model's, 1024)
    batch_tokens: int = 8192
    max_batch: int = 64
    mcq_max_new_tokens: int = 8
    caption_max_new_tokens: int = 32
    out: str | None = None  # report.json
    progress: bool = True
