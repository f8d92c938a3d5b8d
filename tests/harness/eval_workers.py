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



def make_answering_export(export: Path, prompts: list[tuple[list[int], list[torch.Tensor]]],
                          answers: list[str]) -> None:
    """Rewrite an export's output head so that its first token after each of ``prompts`` (ids, patches) is the
    word ``answers`` gives it ("Yes", "No", "A", ...).

    The head's rows are zero but for the answer words' tokens, fitted by least squares on the prompts' final
    hidden states (fewer prompts than hidden units: the fit is exact) to logit +10 for a prompt's answer and -10
    for the other words; every other token keeps logit 0.
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
        states.append(out.hidden_states[-1][0, -1].double())
    h = torch.stack(states)
    words = sorted(set(answers))
    target = torch.full((len(prompts), len(words)), -10.0, dtype=torch.float64)
    target[range(len(answers)), [words.index(a) for a in answers]] = 10.0
    rows = (torch.linalg.pinv(h) @ target).T  # (words, hidden)
    assert torch.allclose(h @ rows.T, target, atol=0.5), "the prompts' hidden states are not independent"
    tokens = [backend.tokenizer.encode(w)[0] for w in words]
    for f in Path(export).glob("*.safetensors"):
        tensors = load_file(f)
        for key in [k for k in tensors if k.endswith("lm_head.weight")]:
            w = torch.zeros_like(tensors[key])
            w[tokens] = rows.to(w.dtype)
            tensors[key] = w
        save_file(tensors, f, metadata={"format": "pt"})
