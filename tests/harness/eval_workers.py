"""Evaluation test models and spawned workers (importable by spawned processes)."""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_solo.config.evaluation import EvalConfig
from megatron_solo.evaluation.run import evaluate


def evaluate_worker(configs: list[EvalConfig]) -> None:
    """Run each evaluation in this (already started) world; each writes its own report."""
    from megatron_solo.hf.importer import quiet_workers

    quiet_workers()
    for cfg in configs:
        evaluate(cfg)


def sharp_hf_mistral(directory: Path, seed: int = 0) -> Path:
    """A small random HF Mistral whose output head is scaled up, so its predictions are far from uniform.

    With the default N(0, 0.02) weights every distribution is nearly uniform and a wrong target or mask
    would hardly move the loss; a 40x head gives logits of a few units and losses that differ per token.
    """
    from tests.harness.ckpt_models import save_hf, small_hf_model

    model = small_hf_model("mistral", layers=2, seed=seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return save_hf(model, directory)
