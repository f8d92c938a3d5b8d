"""The rules that map one megatron tensor to its Hugging Face tensors and back: as is, q/k/v, or stacked.

An adapter (:mod:`megatron_solo.hf.adapters`) declares, per megatron layer tensor, which rule joins
which HF tensors; import (``join``) and export (``split``) both read that one declaration.
Megatron names are the canonical checkpoint names (:mod:`megatron_solo.checkpoint.names`), so a
mapping holds for models built with the local spec and with Transformer Engine alike.
Layout facts of megatron-core: ``linear_qkv`` (weight and bias) is grouped by KV head (per group:
its query heads, then its key head, then its value head), and SwiGLU's ``linear_fc1`` is
``[gate; up]``. RoPE needs no permutation (both use the half-rotation form).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_solo.config.model import SoloModelConfig


@dataclass(frozen=True)
class Direct:
    """One HF tensor that is the megatron tensor."""

    hf: str

    @property
    def parts(self) -> tuple[str, ...]:
        """The HF tensor names this rule reads and writes."""
        return (self.hf,)

    def join(self, tensors: list[torch.Tensor], cfg: SoloModelConfig) -> torch.Tensor:
        """HF tensors (in ``parts`` order) -> the megatron tensor."""
        return tensors[0]

    def split(self, tensor: torch.Tensor, cfg: SoloModelConfig) -> list[torch.Tensor]:
        """The megatron tensor -> HF tensors in ``parts`` order."""
        return [tensor]


@dataclass(frozen=True)
class Stacked:
    """HF tensors of equal rows stacked along dim 0 (SwiGLU's ``[gate; up]``)."""

    hf_parts: tuple[str, ...]

    @property
    def parts(self) -> tuple[str, ...]:
        """The HF tensor names this rule reads and writes."""
        return self.hf_parts

    def join(self, tensors: list[torch.Tensor], cfg: SoloModelConfig) -> torch.Tensor:
        """HF tensors (in ``parts`` order) -> the megatron tensor."""
        return torch.cat(tensors, dim=0)

    def split(self, tensor: torch.Tensor, cfg: SoloModelConfig) -> list[torch.Tensor]:
        """The megatron tensor -> HF tensors in ``parts`` order."""
        return list(torch.chunk(tensor, len(self.hf_parts), dim=0))


@dataclass(frozen=True)
class GroupedQKV:
    """HF q, k, v projections (weights or biases) <-> megatron's ``linear_qkv`` grouped by KV head."""

    q: str
    k: str
    v: str

    @property
    def parts(self) -> tuple[str, ...]:
        """The HF tensor names this rule reads and writes."""
        return (self.q, self.k, self.v)

    def join(self, tensors: list[torch.Tensor], cfg: SoloModelConfig) -> torch.Tensor:
        """HF (q, k, v) -> the grouped megatron tensor (a bias is a tensor of one column)."""
        q, k, v = (t.reshape(t.shape[0], -1) for t in tensors)
        groups, dim = cfg.num_query_groups, cfg.kv_channels
        per_group = cfg.num_attention_heads // groups
        fused = torch.cat([q.view(groups, per_group * dim, -1), k.view(groups, dim, -1), v.view(groups, dim, -1)], 1)
        return fused.reshape(-1, *tensors[0].shape[1:])

    def split(self, tensor: torch.Tensor, cfg: SoloModelConfig) -> list[torch.Tensor]:
        """The grouped megatron tensor -> HF (q, k, v)."""
        groups, dim = cfg.num_query_groups, cfg.kv_channels
        per_group = cfg.num_attention_heads // groups
        grouped = tensor.reshape(groups, (per_group + 2) * dim, -1)
        parts = torch.split(grouped, [per_group * dim, dim, dim], dim=1)
        return [p.reshape(-1, *tensor.shape[1:]) for p in parts]


Rule = Direct | Stacked | GroupedQKV

# The decoder layer every Mistral-style adapter starts from: megatron layer tensor -> its rule.
DECODER_LAYER: dict[str, Rule] = {
    "self_attention.linear_qkv.layer_norm_weight": Direct("input_layernorm.weight"),
    "self_attention.linear_qkv.weight": GroupedQKV("self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                                   "self_attn.v_proj.weight"),
    "self_attention.linear_proj.weight": Direct("self_attn.o_proj.weight"),
    "mlp.linear_fc1.layer_norm_weight": Direct("post_attention_layernorm.weight"),
    "mlp.linear_fc1.weight": Stacked(("mlp.gate_proj.weight", "mlp.up_proj.weight")),
    "mlp.linear_fc2.weight": Direct("mlp.down_proj.weight"),
}
QKV_BIAS: dict[str, Rule] = {
    "self_attention.linear_qkv.bias": GroupedQKV("self_attn.q_proj.bias", "self_attn.k_proj.bias",
                                                 "self_attn.v_proj.bias"),
}

# q/k RMSNorm over each head (Qwen3): one weight of head width, shared by every head
QK_NORM: dict[str, Rule] = {
    "self_attention.q_layernorm.weight": Direct("self_attn.q_norm.weight"),
    "self_attention.k_layernorm.weight": Direct("self_attn.k_norm.weight"),
}


def megatron_layer_shapes(cfg: SoloModelConfig) -> dict[str, tuple[int, ...]]:
    """Full (unsharded) shape of each megatron tensor of one decoder layer, by canonical name."""
    q, kv = cfg.num_attention_heads * cfg.kv_channels, cfg.num_query_groups * cfg.kv_channels
    h, ffn = cfg.hidden_size, cfg.ffn_hidden_size
    return {
        "self_attention.linear_qkv.layer_norm_weight": (h,),
        "self_attention.linear_qkv.weight": (q + 2 * kv, h),
        "self_attention.linear_qkv.bias": (q + 2 * kv,),
        "self_attention.linear_proj.weight": (h, q),
        "self_attention.q_layernorm.weight": (cfg.kv_channels,),
        "self_attention.k_layernorm.weight": (cfg.kv_channels,),
        "mlp.linear_fc1.layer_norm_weight": (h,),
        "mlp.linear_fc1.weight": (2 * ffn, h),
        "mlp.linear_fc2.weight": (h, ffn),
    }


def hf_layer_shapes(cfg: SoloModelConfig, rules: dict[str, Rule]) -> dict[str, tuple[int, ...]]:
    """The shape of each HF tensor of one decoder layer that ``rules`` read, as ``cfg`` implies it."""
    shapes = megatron_layer_shapes(cfg)
    out = {}
    for m_name, rule in rules.items():
        parts = rule.split(torch.empty(shapes[m_name], device="meta"), cfg)
        out.update({name: tuple(t.shape) for name, t in zip(rule.parts, parts, strict=True)})
    return out
