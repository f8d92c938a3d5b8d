"""Generate with an exported SOLO model (stock transformers FuyuForCausalLM + SoloProcessor)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch


def load_exported(model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """(model, processor) of a directory written by :func:`export_checkpoint` (format "fuyu")."""
    from transformers import AutoModelForCausalLM

    from megatron_solo.hf.processor import SoloProcessor

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).eval()
    return model, SoloProcessor.from_pretrained(model_dir)


def generate(
    model_dir: str | os.PathLike,
    prompt: str,
    images: Sequence = (),
    *,
    chat: bool = True,
    max_new_tokens: int = 64,
    loaded=None,
) -> str:
    """Greedy answer of the exported model to ``prompt`` about ``images`` (paths, bytes or PIL images)."""
    model, processor = loaded or load_exported(model_dir)
    inputs = processor(prompt, images=list(images) or None, chat=chat)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=processor.tokenizer.eos_id, pad_token_id=processor.tokenizer.pad_id)
    return processor.decode(out[0, inputs["input_ids"].shape[1]:])
