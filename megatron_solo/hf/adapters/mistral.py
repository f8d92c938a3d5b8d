"""Mistral (``MistralForCausalLM``): SOLO's base model, and the decoder inside every Fuyu export."""

from __future__ import annotations

from megatron_solo.config.model import SoloModelConfig
from megatron_solo.hf.adapters.base import DecoderAdapter


class MistralAdapter(DecoderAdapter):
    """Mistral-7B and its relatives; also writes the MistralConfig of an exported decoder."""

    name = "mistral"
    architectures = ("MistralForCausalLM",)

    def export_config(self, cfg: SoloModelConfig, tok, dtype: str) -> dict:
        """The MistralConfig (as a dict) of ``cfg``'s decoder."""
        from transformers import MistralConfig

        return MistralConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_query_groups, head_dim=cfg.kv_channels, rms_norm_eps=cfg.norm_epsilon,
            rope_theta=cfg.rotary_base, sliding_window=cfg.sliding_window,
            max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=False,
            bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, dtype=dtype,
        ).to_dict()
