"""Choose the transformer layer implementation in one place (TE on GPUs, local otherwise)."""

from __future__ import annotations

import functools
import importlib.util

from megatron_solo.config.model import SoloModelConfig


@functools.cache
def transformer_engine_usable() -> bool:
    """True when Transformer Engine is installed and CUDA is present (TE is imported only then)."""
    import torch

    if not torch.cuda.is_available() or importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # a broken TE install must not stop a local-spec run
        return False
    return True


def resolve_impl(model: SoloModelConfig) -> str:
    """"te" or "local" for this config on this machine; ValueError when TE is asked for but absent."""
    if model.transformer_impl == "auto":
        return "te" if transformer_engine_usable() else "local"
    if model.transformer_impl == "te" and not transformer_engine_usable():
        raise ValueError("transformer_impl='te' but Transformer Engine or CUDA is not available")
    if model.transformer_impl not in ("te", "local"):
        raise ValueError(f"transformer_impl must be 'auto', 'te' or 'local', got {model.transformer_impl!r}")
    return model.transformer_impl


def layer_spec(model: SoloModelConfig, impl: str, core_attention=None):
    """megatron-core layer spec: TE fused layers, or the local spec with ``core_attention`` injected."""
    if impl == "te":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec()
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    if core_attention is not None:
        spec.submodules.self_attention.submodules.core_attention = core_attention
    return spec
