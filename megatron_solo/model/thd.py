"""The packed ``thd`` layout of a micro-batch, the one megatron-core's Transformer Engine path takes.

megatron-core's thd attention reads ONE flat sequence: hidden states ``[T, 1, H]`` with the
``T = B x S`` tokens of the micro-batch in batch-major order, and document boundaries
``cu_seqlens`` over those T tokens (our collate already offsets them over ``B x S``). Attention
then never crosses a boundary, and rotary positions restart at every boundary: megatron-core
builds the frequencies for ``max_seqlen`` positions and applies them per document from
``cu_seqlens`` (``rope_utils._apply_rotary_pos_emb_thd``, or TE's fused thd kernel). That equals
SOLO's ``position_ids`` exactly when they restart at each boundary, which :func:`check_positions`
makes sure of. Documents are not padded one by one, so ``cu_seqlens_*_padded`` stay unset.

Between pipeline stages megatron-core sends tensors shaped ``[S, B, H]`` (``S / TP`` with sequence
parallelism); a thd stage output ``[T, 1, H]`` is sent as a *reinterpretation* of the same memory
(:func:`pipeline_view`), and the next stage reads it back with :func:`from_pipeline_view`.
"""

from __future__ import annotations

import dataclasses

import torch


def to_thd(hidden: torch.Tensor) -> torch.Tensor:
    """``[S, B, H]`` hidden states -> ``[B*S, 1, H]``, tokens batch-major (the order of ``cu_seqlens``)."""
    return hidden.transpose(0, 1).reshape(-1, 1, hidden.shape[-1])


def from_thd(hidden: torch.Tensor, batch: int) -> torch.Tensor:
    """``[B*S, 1, H]`` -> ``[S, B, H]``: the inverse of :func:`to_thd`."""
    return hidden.reshape(batch, -1, hidden.shape[-1]).transpose(0, 1)


def flatten_tokens(values: torch.Tensor) -> torch.Tensor:
    """``[B, S, ...]`` per-token values -> ``[1, B*S, ...]`` (one packed row)."""
    return values.reshape(1, -1, *values.shape[2:])


def unflatten_tokens(values: torch.Tensor, batch: int) -> torch.Tensor:
    """``[1, B*S, ...]`` -> ``[B, S, ...]``: per-token losses or logits back in the micro-batch's shape."""
    return values.reshape(batch, -1, *values.shape[2:])


def pipeline_view(hidden: torch.Tensor, batch: int) -> torch.Tensor:
    """A thd stage output ``[T, 1, H]`` viewed as the ``[T/B, B, H]`` tensor megatron-core's p2p expects.

    Not a transpose: the memory is unchanged, so the receiving stage recovers the thd tensor with
    :func:`from_pipeline_view` and gradients flow back through the same views.
    """
    return hidden.view(-1, batch, hidden.shape[-1])


def from_pipeline_view(received: torch.Tensor) -> torch.Tensor:
    """The ``[T/B, B, H]`` tensor received from the previous stage -> the thd ``[T, 1, H]`` it carries."""
    return received.view(-1, 1, received.shape[-1])


def document_positions(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """``[total]`` positions restarting at 0 at every boundary of ``cu_seqlens`` (as thd RoPE numbers them)."""
    cu = cu_seqlens.to(torch.long)
    tokens = torch.arange(total, device=cu.device)
    doc = torch.searchsorted(cu, tokens, right=True) - 1
    return tokens - cu[doc.clamp(max=cu.numel() - 1)]


def check_positions(position_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> None:
    """ValueError when ``position_ids`` [B, S] do not restart at every document boundary of ``cu_seqlens``.

    The thd path takes its rotary positions from ``cu_seqlens``; a batch whose ``position_ids`` say
    otherwise would silently be rotated differently from what the data asked for.
    """
    batch, seq = position_ids.shape
    if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != batch * seq:
        raise ValueError(
            f"cu_seqlens must run from 0 to batch x seq = {batch * seq}, got {int(cu_seqlens[0])}..{int(cu_seqlens[-1])}"
        )
    expected = document_positions(cu_seqlens, batch * seq).view(batch, seq)
    wrong = expected != position_ids.to(expected.device)
    if wrong.any():
        b, s = (int(x) for x in wrong.nonzero()[0])
        raise ValueError(
            f"sample {b}: position_ids[{s}] = {int(position_ids[b, s])} but the thd layout numbers it "
            f"{int(expected[b, s])} (positions must restart at 0 at every cu_seqlens boundary)"
        )


def with_format(params, qkv_format: str):
    """``params`` (a PackedSeqParams) in ``qkv_format``, with ``max_seqlen_*`` filled from ``cu_seqlens``."""
    changes: dict = {}
    if params.qkv_format != qkv_format:
        changes["qkv_format"] = qkv_format
    for side in ("q", "kv"):
        cu = getattr(params, f"cu_seqlens_{side}")
        if getattr(params, f"max_seqlen_{side}") is None and cu is not None:
            changes[f"max_seqlen_{side}"] = int((cu[1:] - cu[:-1]).max())
    return dataclasses.replace(params, **changes) if changes else params
