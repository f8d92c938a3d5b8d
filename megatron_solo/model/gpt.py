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
        position_embedding_type="rope",
        rotary_base=int(model.rotary_base),
        parallel_output=True,
    )


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

    from megatron_solo.model.specs import layer_spec
    from megatron_solo.model.transformer_config import build_transformer_config

    config = build_transformer_config(model, parallel, bf16=bf16)
    return GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(model, "local"),
        pre_process=pre_process,
        post_process=post_process,
        vp_stage=vp_stage,
        **gpt_kwargs(model, parallel),
    )
