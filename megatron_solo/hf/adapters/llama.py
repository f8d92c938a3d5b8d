"""Llama (``LlamaForCausalLM``, tied embeddings too): a Mistral-style decoder without a sliding window."""

from __future__ import annotations

from megatron_solo.config.model import SoloModelConfig
from megatron_solo.hf.adapters.base import DecoderAdapter
from megatron_solo.hf.source import ConversionError, HFSource


class LlamaAdapter(DecoderAdapter):
    """Llama-architecture models (e.g. SmolLM2); config.json's sliding_window, if any, is not Llama's."""

    name = "llama"
    architectures = ("LlamaForCausalLM",)
    model_type = "llama"

    def window_from_hf(self, src: HFSource) -> int | None:
        """Llama attends over the whole context."""
        return None

    def window_to_hf(self, cfg: SoloModelConfig) -> dict:
        """Llama has no sliding window: a model trained with one cannot be written as Llama."""
        if cfg.sliding_window is not None:
            raise ConversionError(f"sliding_window = {cfg.sliding_window}: a Llama decoder has no sliding window")
        return {}
