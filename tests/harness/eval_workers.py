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



def make_yes_no_export(export: Path, prompts: list[tuple[list[int], list[torch.Tensor]]]) -> None:
    """Rewrite an export's output head so that it says only "Yes" or "No", which one depending on the input.

    The head's rows are zero but for "Yes" (+d) and "No" (-d), d a direction along which the final hidden
    states of ``prompts`` (ids, patches) differ (orthogonal to their mean, so the answers are mixed).
    """
    from safetensors.torch import load_file, save_file

    from megatron_solo.evaluation.documents import prompt_doc
    from megatron_solo.evaluation.hf_backend import HFBackend

    backend = HFBackend(export)
    states = []
    for ids, patches in prompts:
        doc = prompt_doc(ids, patches)
        with torch.no_grad():
            out = backend.model(input_ids=torch.tensor([ids]), output_hidden_states=True,
                                **backend._images(doc.patches))
        states.append(out.hidden_states[-1][0, -1].float())
    h = torch.stack(states)
    mean = h.mean(0)
    d = h[0] - mean
    d = d - (d @ mean) / (mean @ mean) * mean
    d = d * 10.0 / ((h - mean) @ d).abs().median().clamp_min(1e-6)  # logits of about +-10
    yes, no = (backend.tokenizer.encode(w)[0] for w in ("Yes", "No"))
    for f in Path(export).glob("*.safetensors"):
        tensors = load_file(f)
        for key in [k for k in tensors if k.endswith("lm_head.weight")]:
            w = torch.zeros_like(tensors[key])
            w[yes], w[no] = d.to(w.dtype), -d.to(w.dtype)
            tensors[key] = w
        save_file(tensors, f, metadata={"format": "pt"})
