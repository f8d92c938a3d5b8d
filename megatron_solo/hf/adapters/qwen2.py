"""Qwen2 (``Qwen2ForCausalLM``): a Mistral-style decoder whose q/k/v projections carry biases.

Small Qwen2 models tie their embeddings. Qwen2's sliding window applies to the layers from
``max_window_layers`` on when ``use_sliding_window`` is set; megatron-core windows every layer or
none, so a window on only some layers is refused.
"""

from __future__ import annotations

from megatron_solo.config.model import SoloModelConfig
from megatron_solo.hf.adapters.base import DecoderAdapter
from megatron_solo.hf.source import ConversionError, HFSource


class Qwen2Adapter(DecoderAdapter):
    """Qwen2 and Qwen2.5 base models."""

    name = "qwen2"
    architectures = ("Qwen2ForCausalLM",)
    model_type = "qwen2"
    qkv_bias = True

    def window_from_hf(self, src: HFSource) -> int | None:
        """The window when every layer slides (``layer_types``, else ``max_window_layers`` 0), None when none."""
        c = src.config
        if not c.get("use_sliding_window") or not c.get("sliding_window"):
            return None
        layers = int(c["num_hidden_layers"])
        types = c.get("layer_types") or ["sliding_attention" if i >= int(c.get("max_window_layers", 28))
                                         else "full_attention" for i in range(layers)]
        windowed = sum(t == "sliding_attention" for t in types)
        if windowed == 0:
            return None
        if windowed != len(types):
            raise ConversionError(f"{src.config_file}: the sliding window covers {windowed} of {len(types)} layers "
                                  "(fields layer_types / max_window_layers); only all or none is supported")
        return int(c["sliding_window"])

    def window_to_hf(self, cfg: SoloModelConfig) -> dict:
        """Qwen2's window fields: on for every layer, or off."""
        on = cfg.sliding_window is not None
        return {"use_sliding_window": on, "sliding_window": cfg.sliding_window if on else None,
                "max_window_layers": 0 if on else cfg.num_layers}
