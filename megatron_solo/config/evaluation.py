"""What one evaluation run measures, on which model, and how (tools/evaluate.py's options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from megatron_solo.config.choices import check_choices
from megatron_solo.config.cli import cli
from megatron_solo.config.job import Template
from megatron_solo.config.parallel import ParallelConfig

Mode = Literal["loglik", "generate", "both"]  # how answers are found: their log-likelihood, generated, or both


@dataclass
class EvalConfig:
    """What to evaluate, on which model, and how."""

    checkpoint: str | None = None  # Megatron save root or iter_N folder
    hf: str | None = None  # folder written by tools/export_to_hf.py
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # Megatron layout (DP: the rest)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the weights' and activations' precision
    # held-out shard folders, each PATH or PATH:NAME: validation loss per source
    val_data: list[str] = field(default_factory=list, metadata=cli(metavar="SHARDS[:NAME]"))
    # held-out classification shards: top-1/top-5 accuracy
    classify: str | None = field(default=None, metadata=cli(metavar="SHARDS"))
    # class names (JSON list/object or text lines); default: the file named in the shards' preprocess_config.json
    class_names: str | None = None
    caption_template: str | None = None  # e.g. "a photo of a {}."; default: the shards' preprocess_config.json, else "{}"
    # training shards of the classification set: adds logistic regression on the same pixels beside the model
    baseline_train: str | None = field(default=None, metadata=cli(metavar="SHARDS"))
    # multiple choice: JSONL of {"image", "question", "options", "answer"}
    mcq: str | None = field(default=None, metadata=cli(metavar="FILE.jsonl"))
    mcq_mode: Mode = "both"  # multiple-choice answers by log-likelihood, generated, or both
    template: Template | None = None  # MCQ prompt template; default: the model's solo_model.json "template", else plain
    # benchmark files as VLMEvalKit (TSV) or lmms-eval (parquet, saved datasets folder) distribute them, or our
    # JSONL, each NAME=PATH (NAME: evaluation/benchmarks.py's BENCHMARKS or the harness's name of it)
    benchmark: list[str] = field(default_factory=list, metadata=cli(metavar="NAME=PATH"))
    benchmark_mode: Mode = "generate"  # benchmark answers by loglik, generate (the harnesses' way) or both
    benchmark_max_new_tokens: int = 16  # benchmark answer length in the generate mode
    caption_images: list[str] = field(default_factory=list, metadata=cli(metavar="IMG"))  # images to caption greedily
    max_samples: int | None = None  # at most this many samples per source and task
    max_side: int | None = None  # longest image side for MCQ / caption images (default: the model's, 1024)
    batch_tokens: int = 8192  # padded tokens per batch
    max_batch: int = 64  # documents per batch
    mcq_max_new_tokens: int = 8  # answer length in the generate mode
    caption_max_new_tokens: int = 32  # caption length
    out: str | None = None  # report.json
    progress: bool = field(default=True, metadata=cli("--quiet"))  # --quiet: no progress bars

    def __post_init__(self) -> None:
        check_choices(self)
