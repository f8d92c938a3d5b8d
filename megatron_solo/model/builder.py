"""Build SoloModel chunks: the one place that picks the layer implementation."""

from __future__ import annotations

from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_solo.config.model import SoloModelConfig
from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.model.gpt import gpt_kwargs
from megatron_solo.model.packed_attention import PackedDocumentAttention
from megatron_solo.model.solo_model import SoloModel
from megatron_solo.model.specs import check_fp8, decoder_spec, resolve_impl
from megatron_solo.model.te_attention import check_te_attention
from megatron_solo.model.transformer_config import build_transformer_config


def solo_decoder_spec(model: SoloModelConfig, impl: str, config, vp_stage: int | None = None):
    """TE spec (packed thd attention inside TE), or the local spec with document-masked attention."""
    if impl == "te":
        return decoder_spec(model, "te", config, vp_stage)
    attention = ModuleSpec(
        module=PackedDocumentAttention,
        params={"backend": model.packed_attention, "window": model.sliding_window},
    )
    return decoder_spec(model, "local", config, vp_stage, core_attention=attention)


def default_packed_format(impl: str) -> str:
    """How packed documents reach attention by default: "thd" for the TE spec (the only packed layout TE
    attention takes), "sbhd" for the local one (whose attention takes both)."""
    return "thd" if impl == "te" else "sbhd"


def build_solo_model(
    model: SoloModelConfig,
    parallel: ParallelConfig,
    pre_process: bool = True,
    post_process: bool = True,
    vp_stage: int | None = None,
    *,
    bf16: bool = False,
    recompute: bool = False,
    packed_format: str | None = None,
) -> SoloModel:
    """One SoloModel chunk for this rank's pipeline stage.

    ``packed_format``: how packed documents reach attention; None: :func:`default_packed_format`.
    """
    from megatron_solo.platform.distributed import current_device

    impl = resolve_impl(model, bf16=bf16)
    check_fp8(model, bf16=bf16)
    if impl == "te" and packed_format == "sbhd":
        raise ValueError("Transformer Engine attention takes packed documents only in the thd layout")
    if impl == "te":
        check_te_attention(model, parallel.tensor_parallel)
    config = build_transformer_config(model, parallel, bf16=bf16, recompute=recompute, use_te=impl == "te")
    return SoloModel(
        config=config,
        transformer_layer_spec=solo_decoder_spec(model, impl, config, vp_stage),
        solo=model,
        packed_format=packed_format or default_packed_format(impl),
        pre_process=pre_process,
        post_process=post_process,
        vp_stage=vp_stage,
        **gpt_kwargs(model, parallel),
    ).to(current_device())  # megatron's local norms are created on the CPU


def solo_provider(model: SoloModelConfig, parallel: ParallelConfig, **kwargs):
    """provider(pre_process, post_process, vp_stage) for :func:`build_model_chunks`."""
    return lambda pre, post, vp: build_solo_model(model, parallel, pre, post, vp, **kwargs)
