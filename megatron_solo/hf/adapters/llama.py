"""Llama (``LlamaForCausalLM``, tied embeddings too): a Mistral-style decoder without a sliding window."""

from __future__ import annotations

from megatron_solo.hf.adapters.base import DecoderAdapter


class LlamaAdapter(DecoderAdapter):
    """Llama-architecture models (e.g. SmolLM2); config.json's sliding_window, if any, is not Llama's."""

    name = "llama"
    architectures = ("LlamaForCausalLM",)
    sliding_window = False
