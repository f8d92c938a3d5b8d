"""Qwen3 (``Qwen3ForCausalLM``): Qwen2 without q/k/v biases, with an RMSNorm over each head's queries and keys.

Its head width is its own field (Qwen3-0.6B: hidden 1024, 16 heads of 128), megatron-core's
``kv_channels``; the q/k norms are megatron-core's ``qk_layernorm``, applied per head before RoPE as
Qwen3 does. The sliding window follows Qwen2's fields (every layer or none).
"""

from __future__ import annotations

from megatron_solo.hf.adapters.qwen2 import Qwen2Adapter


class Qwen3Adapter(Qwen2Adapter):
    """Qwen3 dense base models (the MoE ones are another architecture, refused)."""

    name = "qwen3"
    architectures = ("Qwen3ForCausalLM",)
    model_type = "qwen3"
    qkv_bias = False
    qk_layernorm = True
