"""The SOLO-7B release (``SoloForCausalLM``, or a Mistral checkpoint carrying the patch projection).

It already holds the SOLO tokens and the patch projection, so nothing is drawn fresh; it is also an
export format, for users of the original code (Mistral keys + ``model.embed_vision_patch.weight``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import torch

from megatron_solo.checkpoint.names import PATCH_PROJECTION
from megatron_solo.config.model import SoloModelConfig
from megatron_solo.hf.adapters.base import DecoderAdapter, FreshWeights, has_hf_tokenizer
from megatron_solo.hf.adapters.mistral import MistralAdapter
from megatron_solo.hf.source import ConversionError, HFSource
from megatron_solo.vocab import (
    BASE_VOCAB,
    VISION_START_ID,
    VPATCH_ID,
    HFSoloTokenizer,
    SoloTokenizer,
    check_solo_tokens,
    solo_token_list,
)

PATCH_KEY = "model.embed_vision_patch.weight"


class SoloReleaseAdapter(MistralAdapter):
    """Import and export of the released SOLO-7B layout."""

    name = "solo_release"
    architectures = ("SoloForCausalLM",)

    def matches(self, src: HFSource) -> bool:
        """SoloForCausalLM, or any checkpoint that stores the patch projection."""
        if src.architecture in self.architectures and PATCH_KEY not in src.weight_map:
            raise ConversionError(f"{src.config_file}: architecture SoloForCausalLM but no tensor {PATCH_KEY!r} "
                                  "in the weights")
        return PATCH_KEY in src.weight_map

    def config_from_hf(self, src: HFSource, added_tokens: int) -> tuple[SoloModelConfig, int]:
        """The release's config: its vocabulary already holds the SOLO tokens (nothing is appended)."""
        return super().config_from_hf(src, 0)

    def adjust_config(self, src: HFSource, cfg: SoloModelConfig) -> SoloModelConfig:
        """The release's special ids (its tokenizer confirms them later); check the stored projection's shape."""
        if src.shape(PATCH_KEY) != (cfg.hidden_size, cfg.patch_dim):
            raise ConversionError(f"{src.config_file}: {PATCH_KEY} has shape {src.shape(PATCH_KEY)}, expected "
                                  f"({cfg.hidden_size}, {cfg.patch_dim})")
        return dataclasses.replace(cfg, vpatch_token_id=VPATCH_ID, first_special_id=VISION_START_ID,
                                   decoder_family=MistralAdapter.name)

    def fit_tokenizer(self, src: HFSource, cfg: SoloModelConfig, src_vocab: int, tok) -> SoloModelConfig:
        """The special ids are the tokenizer's (the release's own); its rows must cover the tokenizer."""
        if src_vocab < tok.vocab_size:
            raise ConversionError(f"{src.config_file}: vocab_size {src_vocab} < the tokenizer's {tok.vocab_size} ids")
        return dataclasses.replace(cfg, vpatch_token_id=tok.vpatch_id, first_special_id=tok.vision_id)

    def patch_projection(self, src: HFSource, cfg: SoloModelConfig, fresh: FreshWeights) -> torch.Tensor:
        """The release's own projection."""
        return src.get(PATCH_KEY)

    def tokenizer(self, src: HFSource, tokenizer: str | None, chat_tokens: bool, close_with_vision: bool):
        """The release's tokenizer, which must already hold the SOLO tokens."""
        cand = Path(tokenizer) if tokenizer else src.directory
        sp_file = cand if cand.is_file() else cand / "tokenizer.model"
        rows = self.source_vocab_rows(src)
        if has_hf_tokenizer(cand):
            base = check_solo_tokens(cand)
        elif sp_file.is_file():
            base = BASE_VOCAB
        else:
            raise ConversionError(f"{cand}: no tokenizer with the SOLO tokens found for this SOLO release")
        chat_tokens = chat_tokens and rows >= base + len(solo_token_list(True))
        if sp_file.is_file() and base == BASE_VOCAB:
            return SoloTokenizer(sp_file, chat_tokens=chat_tokens, close_with_vision=close_with_vision)
        from transformers import AutoTokenizer

        return HFSoloTokenizer(AutoTokenizer.from_pretrained(str(cand)), base, chat_tokens, close_with_vision)

    def export_config(self, cfg: SoloModelConfig, tok, dtype: str, decoder: DecoderAdapter) -> dict:
        """The release's config.json: Mistral's plus the patch fields."""
        check_mistral_like(cfg)
        top = self.config_to_hf(cfg, tok, dtype)
        top.update(architectures=["SoloForCausalLM"], model_type="mistral",
                   tie_word_embeddings=not cfg.untie_embeddings, patch_size=cfg.patch_size,
                   num_channels=cfg.num_channels, vpatch_token_id=cfg.vpatch_token_id)
        return top

    def export_tensors(self, sd: dict[str, torch.Tensor], cfg: SoloModelConfig,
                       decoder: DecoderAdapter) -> Iterator[tuple[str, torch.Tensor]]:
        """The release's tensors: Mistral's names and the projection under the release's name."""
        check_mistral_like(cfg)
        yield from decoder.to_hf(sd, cfg)
        yield PATCH_KEY, sd[PATCH_PROJECTION]


def check_mistral_like(cfg: SoloModelConfig) -> None:
    """ConversionError unless the release's Mistral code can hold ``cfg``'s decoder (no biases, q/k norms, RoPE scaling)."""
    unheld = {"q/k/v biases": cfg.qkv_bias, "q/k norms": cfg.qk_layernorm, "RoPE scaling": cfg.rope_scaling}
    for what, present in unheld.items():
        if present:
            raise ConversionError(f"a {cfg.decoder_family} decoder with {what} cannot be written in the SOLO "
                                  "release's (Mistral) format; export --format fuyu instead")
