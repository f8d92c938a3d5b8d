"""Ask Transformer Engine, before the model is built, whether it has an attention kernel for packed documents.

The TE spec runs attention in the thd layout (documents packed back to back, boundaries in
``cu_seqlens``). Whether a kernel takes that depends on the GPU generation, the cuDNN and TE
versions, flash-attn, grouped-query attention and the sliding window: TE up to 2.10 has no unfused
thd fallback, and its fused thd kernels need Hopper and cuDNN 9.6 for GQA with a window. Without a
kernel TE raises "No dot product attention backend" in the first forward, after the job waited for
its nodes and loaded its checkpoint. TE's own selection function answers the question up front, and
its debug log says why each backend was turned down; we collect those lines into one error.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import logging
import os
import warnings

from megatron_solo.config.model import SoloModelConfig
from megatron_solo.model.specs import LayerImplError, te_version

# Where TE keeps get_attention_backend and AttentionParams: 2.4 on, then 1.x-2.3.
TE_BACKEND_MODULES = ("transformer_engine.pytorch.attention.dot_product_attention.utils",
                      "transformer_engine.pytorch.attention")
TE_LOGGER = "DotProductAttention"  # the logger get_attention_backend reports its reasons to (TE 1.12-2.11)


class _Reasons(logging.Handler):
    """Collects TE's "Disabling <backend> as ..." debug lines, in order, once each."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage().strip()
        if line.startswith("Disabling") and line not in self.lines:
            self.lines.append(line)


def _backend_api():
    """TE's module with get_attention_backend and AttentionParams, or None for a TE without them."""
    for name in TE_BACKEND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "get_attention_backend") and hasattr(module, "AttentionParams"):
            return module
    return None


def packed_attention_params(model: SoloModelConfig, tensor_parallel: int, micro_batch_size: int = 1) -> dict:
    """What megatron-core's TEDotProductAttention gives TE for one packed micro-batch on one rank."""
    import torch

    return dict(
        qkv_type=torch.Tensor, qkv_dtype=torch.bfloat16, qkv_layout="thd_thd_thd", batch_size=micro_batch_size,
        num_heads=model.num_attention_heads // tensor_parallel,
        num_gqa_groups=model.num_query_groups // tensor_parallel,
        max_seqlen_q=model.max_position_embeddings, max_seqlen_kv=model.max_position_embeddings,
        head_dim_qk=model.kv_channels, head_dim_v=model.kv_channels,
        # megatron-core turns causal into padding_causal for thd (TE >= 1.7)
        attn_mask_type="padding_causal",
        window_size=(model.sliding_window - 1, 0) if model.sliding_window else (-1, 0),
        attention_dropout=model.attention_dropout, is_training=True,
        # TE's DotProductAttention asks for deterministic kernels when this says so (fewer qualify)
        deterministic=not int(os.environ.get("NVTE_ALLOW_NONDETERMINISTIC_ALGO", "1")),
    )


def ask_te(fields: dict) -> tuple[list[bool], list[str]] | None:
    """TE's [flash, fused, unfused] availability for ``fields`` and its reasons; None if TE cannot say."""
    api = _backend_api()
    if api is None:
        return None
    known = {field.name for field in dataclasses.fields(api.AttentionParams)}
    params = api.AttentionParams(**{k: v for k, v in fields.items() if k in known})
    logger, reasons = logging.getLogger(TE_LOGGER), _Reasons()
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(reasons)
    try:
        result = api.get_attention_backend(params)
    finally:
        logger.removeHandler(reasons)
        logger.setLevel(level)
    return [bool(b) for b in result[-1]], reasons.lines  # every TE returns available_backends last


def describe_machine() -> str:
    """The GPU generation, cuDNN and flash-attn this process sees, for the error line."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    cudnn = torch.backends.cudnn.version()
    try:
        flash = f"flash-attn {importlib.metadata.version('flash-attn')}"
    except importlib.metadata.PackageNotFoundError:
        flash = "flash-attn not installed"
    return (f"{torch.cuda.get_device_name()} (sm{major}{minor}), cuDNN {cudnn or 'absent'}, {flash}, "
            f"Transformer Engine {te_version()}")


def check_te_attention(model: SoloModelConfig, tensor_parallel: int) -> None:
    """LayerImplError, naming what is missing and what to use, when TE has no kernel for our packed attention."""
    fields = packed_attention_params(model, tensor_parallel)
    answer = _ask_once(tuple(fields.items()))
    if answer is None or any(answer[0]):
        return
    fixes = ["transformer_impl='local' (--transformer-impl local)"]
    if model.sliding_window:
        fixes.append("a model without sliding_window")
    window = f", window {model.sliding_window}" if model.sliding_window else ""
    raise LayerImplError(
        "Transformer Engine has no attention kernel for packed documents (thd) with "
        f"{model.num_attention_heads} heads, {model.num_query_groups} query groups, head size {model.kv_channels}"
        f"{window} on this machine: {describe_machine()}; TE says: {'; '.join(answer[1]) or 'no backend'}; "
        f"use {' or '.join(fixes)}")


@functools.cache
def _ask_once(fields: tuple) -> tuple[list[bool], list[str]] | None:
    # every chunk of a model (and a rebuild) asks the same question; TE's answer does not change in a process
    try:
        return ask_te(dict(fields))
    except Exception as err:  # a TE whose selection function wants other fields: its first forward decides
        warnings.warn(f"could not ask Transformer Engine {te_version()} for its packed-attention kernels "
                      f"({type(err).__name__}: {err}); the first forward will tell", stacklevel=2)
        return None
