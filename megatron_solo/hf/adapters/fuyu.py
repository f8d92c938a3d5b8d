"""Fuyu (``FuyuForCausalLM``), the export target stock transformers opens without remote code.

Fuyu REPLACES the embedding at image-token positions by ``vision_embed_tokens(patch)``; with the
projection's bias set to the ``<vpatch>`` embedding this equals SOLO's ``embed(<vpatch>) + W patch``.
Fuyu's patches are flattened (row, col, channel), SOLO's (channel, row, col): the projection's input
columns are permuted. Its language model is built by transformers from ``text_config`` (any decoder
``AutoModel`` knows): the config and tensors of the model's own decoder family, written by its adapter.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from megatron_solo.checkpoint.names import EMBEDDING, PATCH_PROJECTION
from megatron_solo.config.model import SoloModelConfig
from megatron_solo.hf.adapters.base import DecoderAdapter, renamed_decoder


def fuyu_projection(weight: torch.Tensor, cfg: SoloModelConfig) -> torch.Tensor:
    """Permute the projection's input columns from SOLO's (channel, row, col) to Fuyu's (row, col, channel)."""
    p, c = cfg.patch_size, cfg.num_channels
    return weight.reshape(-1, c, p, p).permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


class FuyuExport:
    """Export-only adapter: a FuyuForCausalLM around the model's decoder."""

    name = "fuyu"

    def export_config(self, cfg: SoloModelConfig, tok, dtype: str, decoder: DecoderAdapter) -> dict:
        """FuyuConfig (as a dict) with ``decoder``'s text config inside."""
        from transformers import FuyuConfig

        text = decoder.config_to_hf(cfg, tok, dtype)
        top = FuyuConfig(
            text_config=text, patch_size=cfg.patch_size, num_channels=cfg.num_channels,
            image_size=1024, image_token_id=cfg.vpatch_token_id, tie_word_embeddings=False,
        ).to_dict()
        # transformers 4.x reads these at the top level
        top.update(hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size, architectures=["FuyuForCausalLM"])
        top.update(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, dtype=dtype)
        return top

    def export_tensors(self, sd: dict[str, torch.Tensor], cfg: SoloModelConfig,
                       decoder: DecoderAdapter) -> Iterator[tuple[str, torch.Tensor]]:
        """Fuyu's tensors: the decoder under ``model.language_model.``, an untied head, the vision embedding."""
        # Fuyu unties: a shared matrix is written twice
        yield from renamed_decoder(decoder, sd, cfg, "model.language_model.", untied_output=True)
        yield "model.vision_embed_tokens.weight", fuyu_projection(sd[PATCH_PROJECTION], cfg)
        yield "model.vision_embed_tokens.bias", sd[EMBEDDING][cfg.vpatch_token_id]
