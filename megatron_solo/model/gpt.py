"""A plain megatron-core GPTModel from a SoloModelConfig (text only; the base of SoloModel)."""

from __future__ import annotations

from megatron_solo.config.model import SoloModelConfig
from megatron_solo.config.parallel import ParallelConfig


def gpt_kwargs(model: SoloModelConfig, parallel: ParallelConfig) -> dict:
    """GPTModel keyword arguments shared by the plain GPT and SoloModel."""
    return dict(
        vocab_size=model.padded_vocab_size(parallel.tensor_parallel),
        max_sequence_length=model.max_position_embeddings,
        share_embeddings_and_output_weights=not model.untie_embeddings,
        rotary_base=int(model.rotary_base),
        parallel_output=True,
        **rope_kwargs(model),
    )


def rope_kwargs(model: SoloModelConfig) -> dict:
    """GPTModel's RoPE options: plain, Llama-3 scaling (``rope_scaling``) or YaRN (``position_embedding_type``)."""
    s = model.rope_scaling
    if s is None:
        return {"position_embedding_type": "rope"}
    if s.kind == "yarn":  # its values are TransformerConfig attributes (transformer_config.yarn_attributes)
        return {"position_embedding_type": "yarn"}
    return {"position_embedding_type": "rope", "rope_scaling": True, "rope_scaling_factor": s.factor}


def fit_llama3_frequencies(gpt, model: SoloModelConfig) -> None:
    """Give ``gpt``'s Llama-3-scaled RoPE the model's own low/high-frequency factors and original context.

    GPTModel forwards only the factor to RotaryEmbedding, whose ``_apply_scaling`` then takes Llama-3.1's
    1, 4 and 8192 for the other three; the same function scales the plain frequencies again with the
    model's values (the same numbers for every Llama-3.x release, others for a model pre-trained shorter).
    """
    s = model.rope_scaling
    if s is None or s.kind != "llama3" or not hasattr(gpt, "rotary_pos_emb"):
        return
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    rope = gpt.rotary_pos_emb
    plain = RotaryEmbedding(gpt.config.kv_channels, 1.0, rotary_base=gpt.rotary_base, use_cpu_initialization=True)
    rope.inv_freq = rope._apply_scaling(
        plain.inv_freq, factor=s.factor, low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
        original_max_position_embeddings=s.original_max_positions,
    ).to(rope.inv_freq.device)


def build_gpt(
    model: SoloModelConfig,
    parallel: ParallelConfig,
    pre_process: bool,
    post_process: bool,
    vp_stage: int | None = None,
    *,
    bf16: bool = False,
):
    """GPTModel with the local layer spec (CPU-safe), for the platform tests and benchmarks."""
    from megatron.core.models.gpt import GPTModel

    from megatron_solo.model.specs import decoder_spec
    from megatron_solo.model.transformer_config import build_transformer_config

    config = build_transformer_config(model, parallel, bf16=bf16)
    gpt = GPTModel(
        config=config,
        transformer_layer_spec=decoder_spec(model, "local", config, vp_stage),
        pre_process=pre_process,
        post_process=post_process,
        vp_stage=vp_stage,
        **gpt_kwargs(model, parallel),
    )
    fit_llama3_frequencies(gpt, model)
    return gpt
