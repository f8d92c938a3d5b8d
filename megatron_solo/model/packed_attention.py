"""Core attention over packed documents for the local (non-Transformer-Engine) layer spec.

A pack holds several documents back to back; attention must stay causal inside each
document and never cross into another, and Mistral's sliding window applies inside
a document. Document boundaries arrive as ``PackedSeqParams.cu_seqlens_q`` over the
flattened ``batch x seq`` tokens: q/k/v are ``[S, B, heads, dim]`` (sbhd) or, in megatron-core's
packed thd layout, ``[B*S, heads, dim]`` (one flat sequence; see :mod:`megatron_solo.model.thd`).

Backends, chosen by ``SoloModelConfig.packed_attention``:
- ``sdpa_mask``: a boolean block-diagonal causal mask through
  ``scaled_dot_product_attention``. Exact, runs anywhere, memory ~ S^2 (the CPU path).
- ``varlen``: flash attention over variable-length documents
  (``torch.nn.attention.varlen``), CUDA only.
- ``flex``: FlexAttention with a document mask, compiled, CUDA only (it has no
  backward on CPU in torch 2.13).
"""

from __future__ import annotations

import functools
import inspect
import math

import torch
import torch.nn.functional as F


def document_ids(cu_seqlens: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """[batch, seq] id of the document each token belongs to (ids are global over the batch)."""
    cu = cu_seqlens.to(torch.long)
    flat = torch.arange(batch * seq, device=cu.device)
    return (torch.searchsorted(cu, flat, right=True) - 1).view(batch, seq)


def document_causal_mask(doc: torch.Tensor, window: int | None) -> torch.Tensor:
    """[batch, 1, seq, seq] boolean mask: same document, causal, inside the sliding window."""
    seq = doc.shape[1]
    pos = torch.arange(seq, device=doc.device)
    causal = pos[None, :] <= pos[:, None]
    if window is not None:
        causal &= (pos[:, None] - pos[None, :]) < window
    same = doc[:, :, None] == doc[:, None, :]
    return (same & causal)[:, None]


@functools.cache
def varlen_supported() -> bool:
    """Whether torch has flash varlen attention with GQA and window arguments on this GPU."""
    if not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return False
    params = inspect.signature(varlen_attn).parameters
    return "window_size" in params and "enable_gqa" in params


def resolve_backend(requested: str, dtype: torch.dtype | None = None) -> str:
    """Concrete backend for ``requested`` ('auto' picks the fastest available for ``dtype``)."""
    if requested == "auto":
        if not torch.cuda.is_available():
            return "sdpa_mask"
        # Flash varlen kernels take half precision only; fp32 runs go through FlexAttention.
        half = dtype in (torch.float16, torch.bfloat16)
        return "varlen" if half and varlen_supported() else "flex"
    if requested not in ("sdpa_mask", "varlen", "flex"):
        raise ValueError(f"packed_attention must be auto, sdpa_mask, varlen or flex, got {requested!r}")
    if requested in ("varlen", "flex") and not torch.cuda.is_available():
        raise ValueError(f"packed_attention={requested!r} needs CUDA; use 'sdpa_mask' on CPU")
    return requested


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


_BLOCK_MASK_CACHE: dict = {}


def _block_mask(doc: torch.Tensor, window: int | None, cu_seqlens: torch.Tensor):
    """FlexAttention block mask of one micro-batch, built once and shared by every layer."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = (cu_seqlens.data_ptr(), cu_seqlens.numel(), int(cu_seqlens[-1]), doc.shape, window)
    cached = _BLOCK_MASK_CACHE.get(key)
    if cached is not None and torch.equal(cached[0], cu_seqlens):
        return cached[1]

    def mask_mod(b, h, q_idx, kv_idx):
        keep = (doc[b, q_idx] == doc[b, kv_idx]) & (kv_idx <= q_idx)
        if window is not None:
            keep = keep & (q_idx - kv_idx < window)
        return keep

    batch, seq = doc.shape
    # _compile avoids materialising the S x S mask (8 GiB at 32K tokens).
    mask = create_block_mask(mask_mod, batch, None, seq, seq, device=doc.device, _compile=True)
    _BLOCK_MASK_CACHE.clear()
    _BLOCK_MASK_CACHE[key] = (cu_seqlens.clone(), mask)
    return mask


def _flex_attention(q, k, v, block_mask, scale):
    return _compiled_flex()(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


class PackedDocumentAttention(torch.nn.Module):
    """Drop-in ``core_attention`` for megatron-core's local spec that honours document boundaries."""

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
        backend: str = "auto",
        window: int | None = None,
    ) -> None:
        super().__init__()
        if config.context_parallel_size != 1:
            raise ValueError("PackedDocumentAttention does not support context parallelism")
        self.config = config
        self.requested = backend
        resolve_backend(backend)  # fail at build time on an impossible choice
        self.window = window
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type=None,
        attention_bias=None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        """[S, B, heads, dim] q/k/v -> [S, B, heads * dim] context; thd [T, heads, dim] -> [T, heads * dim]."""
        if query.dim() == 3:  # thd: one flat sequence of T tokens
            out = self.forward(*(t.unsqueeze(1) for t in (query, key, value)), attention_mask,
                               attn_mask_type, attention_bias, packed_seq_params)
            return out.squeeze(1)
        seq, batch, heads, dim = query.shape
        if packed_seq_params is None:
            cu = torch.arange(0, (batch + 1) * seq, seq, device=query.device, dtype=torch.int32)
        else:
            cu = packed_seq_params.cu_seqlens_q
        backend = resolve_backend(self.requested, query.dtype)
        if backend == "varlen":
            out = self._varlen(query, key, value, cu, packed_seq_params)
        else:
            # [B, heads, S, dim] for SDPA / flex
            q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
            doc = document_ids(cu, batch, seq)
            if backend == "flex":
                ctx = _flex_attention(q, k, v, _block_mask(doc, self.window, cu), self.scale)
            else:
                mask = document_causal_mask(doc, self.window)
                ctx = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                    scale=self.scale, enable_gqa=k.shape[1] != q.shape[1],
                )
            out = ctx.permute(2, 0, 1, 3)
        return out.reshape(seq, batch, heads * dim)

    def _varlen(self, query, key, value, cu, packed_seq_params) -> torch.Tensor:
        from torch.nn.attention.varlen import varlen_attn

        seq, batch = query.shape[:2]
        # varlen wants token-major [T, heads, dim] with documents contiguous: b-major order.
        q, k, v = (t.transpose(0, 1).reshape(batch * seq, t.shape[2], t.shape[3]) for t in (query, key, value))
        max_len = int(packed_seq_params.max_seqlen_q) if packed_seq_params is not None and packed_seq_params.max_seqlen_q else seq
        window = (self.window - 1, 0) if self.window is not None else (-1, 0)
        out = varlen_attn(
            q, k, v, cu, cu, max_len, max_len, scale=self.scale, window_size=window,
            enable_gqa=k.shape[1] != q.shape[1],
        )
        return out.view(batch, seq, -1, out.shape[-1]).transpose(0, 1)
