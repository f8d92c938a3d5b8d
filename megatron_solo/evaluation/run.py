"""One evaluation run: a Megatron checkpoint (any TP x PP x DP, under torchrun) or an HF export, the tasks
asked for, one report.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from megatron_solo.config.choices import choices
from megatron_solo.config.evaluation import EvalConfig
from megatron_solo.evaluation.errors import EvaluationError
from megatron_solo.evaluation.registry import parse_source, requested, task_flags
from megatron_solo.evaluation.report import check_report_path, write_report
from megatron_solo.evaluation.tasks import Settings

DTYPES = {name: getattr(torch, name) for name in choices(EvalConfig, "dtype")}  # torch's names
__all__ = ["DTYPES", "check_config", "evaluate", "parse_source"]


def check_config(cfg: EvalConfig) -> None:
    """Refuse impossible requests before any model is loaded (one-line user errors)."""
    if (cfg.checkpoint is None) == (cfg.hf is None):
        raise EvaluationError("give exactly one of --checkpoint (Megatron) and --hf (exported model)")
    tasks = requested(cfg)
    if not tasks:
        raise EvaluationError(f"nothing to evaluate: give {task_flags()}")
    for name, value in (("max_samples", cfg.max_samples), ("batch_tokens", cfg.batch_tokens),
                        ("max_batch", cfg.max_batch), ("mcq_max_new_tokens", cfg.mcq_max_new_tokens),
                        ("benchmark_max_new_tokens", cfg.benchmark_max_new_tokens),
                        ("caption_max_new_tokens", cfg.caption_max_new_tokens)):
        if value is not None and value < 1:
            raise EvaluationError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if cfg.baseline_train and not cfg.classify:
        raise EvaluationError("--baseline-train compares with --classify: give both")
    for flag, path in (p for t in tasks for p in t.paths(cfg)):
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
        for task in requested(cfg):
            report[task.name] = task.run(backend, cfg, settings)
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
