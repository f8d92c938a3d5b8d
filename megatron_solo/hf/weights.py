"""Map full (unsharded) weights between megatron checkpoint names and Hugging Face Mistral/Llama names.

Megatron names are the canonical checkpoint names (:mod:`megatron_solo.checkpoint.names`), so the
mapping holds for models built with the local spec and with Transformer Engine alike.
Layout facts (reference/megatron.md): megatron fuses q, k, v into ``linear_qkv`` grouped by KV
head (per group: its query heads, then its key head, then its value head), and SwiGLU's
``linear_fc1`` is ``[gate; up]``. RoPE needs no permutation (both use the half-rotation form).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from megatron_solo.checkpoint.names import canonical_state_dict
from megatron_solo.config.model import SoloModelConfig

# megatron layer tensor -> HF layer tensor, where one is the other
LAYER_DIRECT = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "mlp.linear_fc1.layer_norm_weight": "post_attention_layernorm.weight",
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
}
QKV = "self_attention.linear_qkv.weight"
FC1 = "mlp.linear_fc1.weight"


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: SoloModelConfig) -> torch.Tensor:
    """HF q/k/v projections -> megatron's grouped ``linear_qkv`` weight."""
    groups, dim = cfg.num_query_groups, cfg.kv_channels
    per_group = cfg.num_attention_heads // groups
    q = q.view(groups, per_group * dim, -1)
    k = k.view(groups, dim, -1)
    v = v.view(groups, dim, -1)
    return torch.cat([q, k, v], dim=1).reshape(-1, q.shape[-1])


def split_qkv(qkv: torch.Tensor, cfg: SoloModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron's grouped ``linear_qkv`` weight -> HF (q, k, v) projections."""
    groups, dim = cfg.num_query_groups, cfg.kv_channels
    per_group = cfg.num_attention_heads // groups
    grouped = qkv.view(groups, (per_group + 2) * dim, -1)
    q, k, v = torch.split(grouped, [per_group * dim, dim, dim], dim=1)
    width = qkv.shape[-1]
    return q.reshape(-1, width), k.reshape(-1, width), v.reshape(-1, width)


def layer_megatron_to_hf(sd: dict[str, torch.Tensor], i: int, cfg: SoloModelConfig) -> dict[str, torch.Tensor]:
    """Layer ``i`` of a full canonical megatron state dict -> HF names relative to ``model.`` (``layers.i.*``)."""
    src, dst = f"decoder.layers.{i}.", f"layers.{i}."
    out = {dst + h_name: sd[src + m_name] for m_name, h_name in LAYER_DIRECT.items()}
    q, k, v = split_qkv(sd[src + QKV], cfg)
    out[dst + "self_attn.q_proj.weight"] = q
    out[dst + "self_attn.k_proj.weight"] = k
    out[dst + "self_attn.v_proj.weight"] = v
    gate, up = torch.chunk(sd[src + FC1], 2, dim=0)
    out[dst + "mlp.gate_proj.weight"] = gate
    out[dst + "mlp.up_proj.weight"] = up
    return out


def megatron_to_hf(sd: dict[str, torch.Tensor], cfg: SoloModelConfig, vocab_size: int) -> dict[str, torch.Tensor]:
    """Full megatron GPT state dict (either spec's names) -> HF Mistral/Llama names, vocab unpadded."""
    sd = canonical_state_dict(sd)
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"][:vocab_size]}
    for i in range(cfg.num_layers):
        out.update({"model." + k: v for k, v in layer_megatron_to_hf(sd, i, cfg).items()})
    out["model.norm.weight"] = sd["decoder.final_layernorm.weight"]
    if "output_layer.weight" in sd:
        out["lm_head.weight"] = sd["output_layer.weight"][:vocab_size]
    return out


def hf_layer_tensor(get: Callable[[str], torch.Tensor], layer: int, name: str, cfg: SoloModelConfig) -> torch.Tensor:
    """Full megatron tensor ``decoder.layers.{layer}.{name}`` (canonical name) read through ``get(hf_name)``."""
    hf = f"model.layers.{layer}."
    if name in LAYER_DIRECT:
        return get(hf + LAYER_DIRECT[name])
    if name == QKV:
        q, k, v = (get(hf + f"self_attn.{p}_proj.weight") for p in "qkv")
        return fuse_qkv(q, k, v, cfg)
    if name == FC1:
        return torch.cat([get(hf + "mlp.gate_proj.weight"), get(hf + "mlp.up_proj.weight")])
    raise KeyError(f"no HF source for megatron layer parameter {name!r}")
