"""One evaluation run: a Megatron checkpoint (any TP x PP x DP, under torchrun) or an HF export, the tasks
asked for, one report.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from megatron_solo.config.evaluation import EvalConfig
from megatron_solo.config.job import TEMPLATES
from megatron_solo.evaluation.errors import EvaluationError
from megatron_solo.evaluation.mcq import MODES, multiple_choice
from megatron_solo.evaluation.report import check_report_path, write_report
from megatron_solo.evaluation.tasks import Settings, captions, classification, validation_loss

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_source(item: str) -> tuple[str, str]:
    """(path, name) of ``PATH`` or ``PATH:NAME``; the name defaults to the folder's (``X/heldout`` for heldout)."""
    path, sep, name = item.rpartition(":")
    if not sep or not path or "/" in name or Path(item).exists():
        path, name = item, ""
    if not name:
        p = Path(path.rstrip("/"))
        name = f"{p.parent.name}/{p.name}" if p.name == "heldout" and p.parent.name else p.name
    return path, name


def check_config(cfg: EvalConfig) -> None:
    """Refuse impossible requests before any model is loaded (one-line user errors)."""
    if (cfg.checkpoint is None) == (cfg.hf is None):
        raise EvaluationError("give exactly one of --checkpoint (Megatron) and --hf (exported model)")
    if not (cfg.val_data or cfg.classify or cfg.mcq or cfg.caption_images):
        raise EvaluationError("nothing to evaluate: give --val-data, --classify, --mcq or --caption-images")
    if cfg.dtype not in DTYPES:
        raise EvaluationError(f"--dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    if cfg.mcq_mode not in MODES:
        raise EvaluationError(f"--mcq-mode must be one of {', '.join(MODES)}, got {cfg.mcq_mode!r}")
    if cfg.template is not None and cfg.template not in TEMPLATES:
        raise EvaluationError(f"--template must be one of {', '.join(TEMPLATES)}, got {cfg.template!r}")
    for name, value in (("max_samples", cfg.max_samples), ("batch_tokens", cfg.batch_tokens),
                        ("max_batch", cfg.max_batch), ("mcq_max_new_tokens", cfg.mcq_max_new_tokens),
                        ("caption_max_new_tokens", cfg.caption_max_new_tokens)):
        if value is not None and value < 1:
            raise EvaluationError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    paths = [("--val-data", parse_source(v)[0]) for v in cfg.val_data]
    paths += [("--classify", cfg.classify), ("--class-names", cfg.class_names), ("--mcq", cfg.mcq),
              ("--baseline-train", cfg.baseline_train)]
    if cfg.baseline_train and not cfg.classify:
        raise EvaluationError("--baseline-train compares with --classify: give both")
    paths += [("--caption-images", p) for p in cfg.caption_images]
    for flag, path in paths:
        if path is not None and not Path(path).exists():
            raise EvaluationError(f"{flag} {path}: no such file or folder")
    if cfg.hf is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise EvaluationError("--hf runs in one process; start it without torchrun")
    if cfg.hf is not None and (cfg.parallel.tensor_parallel, cfg.parallel.pipeline_parallel) != (1, 1):
        raise EvaluationError("--hf runs the export in one process: --tensor-parallel/--pipeline-parallel are for "
                              "--checkpoint")
    if cfg.out:
        check_report_path(cfg.out)
    if cfg.baseline_train:
        from megatron_solo.evaluation.baseline import check_baseline_classes

        check_baseline_classes(cfg.baseline_train)


def _backend(cfg: EvalConfig):
    dtype = DTYPES[cfg.dtype]
    if cfg.hf is not None:
        from megatron_solo.evaluation.hf_backend import HFBackend

        return HFBackend(cfg.hf, dtype, cfg.max_side)
    from megatron_solo.evaluation.megatron_backend import MegatronBackend

    return MegatronBackend(cfg.checkpoint, cfg.parallel, dtype, cfg.max_side)


def evaluate(cfg: EvalConfig, on_report: Callable[[dict], None] | None = None) -> dict | None:
    """Run every task ``cfg`` asks for; the report on the main process (written to ``cfg.out``), else None.

    ``on_report`` sees the report before it is written (a table printed survives a failed write).
    With a Megatron checkpoint every process of the world must call this; a world it started itself
    (no torch.distributed group before the call) is torn down at the end.
    """
    check_config(cfg)
    started_world = cfg.checkpoint is not None and not torch.distributed.is_initialized()
    try:
        backend = _backend(cfg)
        settings = Settings(cfg.max_samples, cfg.batch_tokens, cfg.max_batch, cfg.progress)
        report: dict = {"model": backend.description}
        if cfg.val_data:
            report["val_loss"] = {}
            for item in cfg.val_data:
                path, name = parse_source(item)
                if name in report["val_loss"]:
                    raise EvaluationError(f"--val-data: two sources are named {name!r}; name them PATH:NAME")
                report["val_loss"][name] = validation_loss(backend, path, name, settings)
        if cfg.classify:
            report["classification"] = classification(backend, cfg.classify, cfg.class_names, cfg.caption_template,
                                                      settings)
            if cfg.baseline_train:
                from megatron_solo.evaluation.baseline import logistic_regression_baseline

                report["classification"]["logreg_baseline"] = logistic_regression_baseline(
                    cfg.baseline_train, cfg.classify, backend.processor.patch_size, cfg.max_samples)
        if cfg.mcq:
            report["mcq"] = multiple_choice(backend, cfg.mcq, cfg.mcq_mode, cfg.template, cfg.mcq_max_new_tokens,
                                            settings)
        if cfg.caption_images:
            report["captions"] = captions(backend, cfg.caption_images, cfg.caption_max_new_tokens, settings)
        if not backend.is_main:
            return None
        if on_report is not None:
            on_report(report)
        if cfg.out:
            write_report(report, cfg.out)
        return report
    finally:
        if started_world:
            from megatron_solo.platform import teardown

            teardown()
