"""What no adapter builds, refused by the config.json field that asks for it, before any architecture is matched.

Each is a feature megatron-core's GPT layers (as configured here) do not compute, so no adapter could map
it: Gemma-2's soft-capped logits, mixture-of-experts layers, an MLP other than SwiGLU (Gemma's GeGLU).
A field is taken only when set (Gemma-3 writes its soft-capping fields as null).
"""

from __future__ import annotations

from megatron_solo.hf.source import ConversionError, HFSource

# config.json field -> what it asks for; checked in this order, at the top level and in ``text_config``
FEATURE_FIELDS = {
    "attn_logit_softcapping": "soft-capped attention logits (Gemma-2)",
    "final_logit_softcapping": "soft-capped output logits (Gemma-2)",
    "num_local_experts": "mixture-of-experts layers",
    "num_experts": "mixture-of-experts layers",
    "n_routed_experts": "mixture-of-experts layers",
}
ACTIVATION_FIELDS = ("hidden_act", "hidden_activation")


def refuse_unsupported(src: HFSource) -> None:
    """ConversionError naming the first field of ``src``'s config.json that asks for a feature no adapter builds."""
    for config in (src.config, src.config.get("text_config") or {}):
        for field, feature in FEATURE_FIELDS.items():
            if config.get(field):
                raise ConversionError(f"{src.config_file}: field {field!r} = {config[field]!r}: {feature} "
                                      "are not supported")
        for field in ACTIVATION_FIELDS:
            act = config.get(field)
            if act not in (None, "silu"):
                raise ConversionError(f"{src.config_file}: field {field!r} = {act!r}; only SwiGLU ('silu') "
                                      "is supported")
