"""Translate our dataclasses into megatron-core's TransformerConfig."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megatron_solo.config.model import SoloModelConfig
from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.model.specs import LayerImplError


def build_transformer_config(
    model: SoloModelConfig,
    parallel: ParallelConfig,
    *,
    bf16: bool = False,
    recompute: bool = False,
    use_te: bool = False,
):
    """megatron-core TransformerConfig for a Mistral-style SOLO decoder."""
    from megatron.core.transformer import TransformerConfig

    from megatron_solo.platform.distributed import pipeline_comm_settings, uses_cuda

    dtype = torch.bfloat16 if bf16 else torch.float32
    fused = uses_cuda() if model.fused_kernels is None else model.fused_kernels
    extra: dict = {}
    if recompute:
        extra.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    if model.fp8:
        if not use_te:
            raise LayerImplError("fp8 needs the Transformer Engine layers; the local spec has no FP8 path")
        from megatron.core.enums import Fp8Recipe

        extra.update(
            fp8=model.fp8,
            fp8_recipe=Fp8Recipe(model.fp8_recipe),  # megatron-core compares against its enum
            fp8_amax_history_len=model.fp8_amax_history_len,
            fp8_amax_compute_algo=model.fp8_amax_compute_algo,
        )
    if model.sliding_window is not None:
        # Causal sliding window: each token sees itself and the (window - 1) before it.
        extra["window_size"] = (model.sliding_window - 1, 0)
    config = TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        ffn_hidden_size=model.ffn_hidden_size,
        kv_channels=model.kv_channels,
        qk_layernorm=model.qk_layernorm,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=model.qkv_bias,
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
        init_method_std=model.init_method_std,
        tensor_model_parallel_size=parallel.tensor_parallel,
        pipeline_model_parallel_size=parallel.pipeline_parallel,
        virtual_pipeline_model_parallel_size=parallel.vpp,
        # Unset (not resolved for training: evaluation, conversion) is off.
        sequence_parallel=parallel.sequence_parallel is True,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=bf16,
        autocast_dtype=dtype,
        use_cpu_initialization=not uses_cuda(),
        calculate_per_token_loss=True,
        # The fused kernels need CUDA (and some TE/Apex); the plain paths are exact.
        bias_activation_fusion=fused,
        bias_dropout_fusion=fused,
        cross_entropy_loss_fusion=fused,
        cross_entropy_fusion_impl="native",
        masked_softmax_fusion=False,
        apply_rope_fusion=rope_fusion(model, use_te),
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        **pipeline_comm_settings(),
        **extra,
    )
    for name, value in yarn_attributes(model).items():
        setattr(config, name, value)
    return config


def rope_fusion(model: SoloModelConfig, use_te: bool) -> bool:
    """Whether RoPE runs as Transformer Engine's fused kernel: on the TE path, except for YaRN.

    megatron-core's unfused thd RoPE reads each document's length on the host in every layer; the fused
    kernel takes ``cu_seqlens`` on the GPU. It has no cos/sin factor, which YaRN needs and megatron-core's
    fused thd call would drop. A TE without the kernel keeps the unfused path.
    """
    from megatron.core.models.common.embeddings import rope_utils

    if not use_te or rope_utils.fused_apply_rotary_pos_emb_thd is None:
        return False
    return model.rope_scaling is None or model.rope_scaling.kind != "yarn"


def yarn_attributes(model: SoloModelConfig) -> dict:
    """The ``yarn_*`` config attributes megatron-core's GPTModel and attention read for YaRN RoPE ({} otherwise).

    TransformerConfig declares no fields for them: GPTModel reads them with getattr when built with
    ``position_embedding_type="yarn"``, and attention scales cos/sin by the mscale they give.
    """
    s = model.rope_scaling
    if s is None or s.kind != "yarn":
        return {}
    return dict(
        yarn_rotary_scaling_factor=s.factor, yarn_original_max_position_embeddings=s.original_max_positions,
        yarn_beta_fast=s.beta_fast, yarn_beta_slow=s.beta_slow, yarn_mscale=s.mscale,
        yarn_mscale_all_dim=s.mscale_all_dim, yarn_correction_range_round_to_int=s.truncate,
    )
