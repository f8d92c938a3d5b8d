"""Generate with an exported SOLO model (stock transformers FuyuForCausalLM + SoloProcessor).

The prompt template is the one the checkpoint was trained with, recorded by the exporter in
``solo_export.json`` ("plain" after pre-training, "chat" after instruction tuning); a caller may
override it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from megatron_solo.config.job import CHAT_TEMPLATE, TEMPLATES, recorded_template
from megatron_solo.data.image import ImageError
from megatron_solo.hf.source import ConversionError

EXPORT_META = "solo_export.json"  # written by hf.exporter beside every export


def export_info(model_dir: str | os.PathLike) -> dict:
    """``solo_export.json`` of a Fuyu-format export; ConversionError when ``model_dir`` is not one."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConversionError(f"{model_dir}: no such model directory")
    meta_file = model_dir / EXPORT_META
    if not meta_file.is_file() or not (model_dir / "config.json").is_file():
        raise ConversionError(f"{model_dir}: not a model written by tools/export_to_hf.py (no {EXPORT_META} "
                              "or config.json)")
    try:
        info = json.loads(meta_file.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{meta_file}: not valid JSON ({err})") from err
    if info.get("format", "fuyu") != "fuyu":
        raise ConversionError(f"{model_dir}: exported as {info['format']!r}; generation needs --format fuyu")
    template = recorded_template(info)
    if template not in TEMPLATES:
        raise ConversionError(f"{meta_file}: field 'template' = {template!r}; expected one of {TEMPLATES}")
    return info


def export_template(model_dir: str | os.PathLike) -> str:
    """The prompt template ("plain" or "chat") the exported model was trained with."""
    return recorded_template(export_info(model_dir))


def load_exported(model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """(model, processor) of a directory written by :func:`export_checkpoint` (format "fuyu")."""
    from transformers import AutoModelForCausalLM

    from megatron_solo.hf.processor import SoloProcessor

    export_info(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, use_safetensors=True).eval()
    return model, SoloProcessor.from_pretrained(model_dir)


def generate(
    model_dir: str | os.PathLike,
    prompt: str,
    images: Sequence = (),
    *,
    chat: bool | None = None,
    max_new_tokens: int = 64,
    loaded=None,
) -> str:
    """Greedy answer of the exported model to ``prompt`` about ``images`` (paths, bytes or PIL images).

    ``chat``: SOLO's [INST] template (True) or a plain prompt (False); None: the template the model
    was trained with (``solo_export.json``).
    """
    if max_new_tokens < 1:
        raise ConversionError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if chat is None:
        chat = export_template(model_dir) == CHAT_TEMPLATE
    model, processor = loaded or load_exported(model_dir)
    try:
        inputs = processor(prompt, images=list(images) or None, chat=chat)
    except ImageError as err:
        raise ConversionError(f"image {err.detail} ({err.reason})") from None
    positions = int(model.config.text_config.max_position_embeddings)
    length = int(inputs["input_ids"].shape[1])
    if length + max_new_tokens > positions:
        raise ConversionError(f"the prompt is {length} tokens (images included) and {max_new_tokens} new tokens are "
                              f"asked for, beyond the model's {positions} positions; shorten the prompt or ask for "
                              "fewer new tokens")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=processor.tokenizer.eos_id, pad_token_id=processor.tokenizer.pad_id)
    return processor.decode(out[0, inputs["input_ids"].shape[1]:])
