"""Mistral (``MistralForCausalLM``): SOLO's base model, and the decoder of every export from a Mistral start."""

from __future__ import annotations

from megatron_solo.hf.adapters.base import DecoderAdapter


class MistralAdapter(DecoderAdapter):
    """Mistral-7B and its relatives: the plain decoder, with config.json's sliding window."""

    name = "mistral"
    architectures = ("MistralForCausalLM",)
    model_type = "mistral"
