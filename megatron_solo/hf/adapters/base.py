"""The Mistral-style decoder every adapter starts from: its config, tensors and tokenizer, both ways.

An adapter owns what one HF architecture needs, in both directions (like torchtitan's state-dict
adapters): whether it reads a source (``matches``); the SoloModelConfig from its config.json
(``config_from_hf``) and the config.json of an exported decoder (``config_to_hf``); the tensor
rules of a decoder layer (``layer_rules``: which HF tensors join into which megatron tensor, biases
included), read by import (``from_hf``) and export (``to_hf``) alike; and its tokenizer rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from megatron_solo.checkpoint.names import (
    EMBEDDING,
    FINAL_NORM,
    OUTPUT_LAYER,
    PATCH_PROJECTION,
    canonical_state_dict,
)
from megatron_solo.config.model import SoloModelConfig
from megatron_solo.hf.rope import rope_from_hf, rope_to_hf
from megatron_solo.hf.source import ConversionError, HFSource
from megatron_solo.hf.weights import DECODER_LAYER, QK_NORM, QKV_BIAS, Rule, hf_layer_shapes
from megatron_solo.vocab import BASE_VOCAB, HFSoloTokenizer, SoloTokenizer

HF_EMBED = "model.embed_tokens.weight"
HF_NORM = "model.norm.weight"
HF_HEAD = "lm_head.weight"
HF_LAYER = "model.layers.{}."


class FreshWeights:
    """Weights an import adds (SOLO token rows, a patch projection): N(0, std), one seeded stream each."""

    def __init__(self, cfg: SoloModelConfig, padded_vocab: int, std: float, seed: int):
        """``padded_vocab``: rows of the embedding at the target layout (zero rows pad past the vocabulary)."""
        self.cfg, self.padded, self.std, self.seed = cfg, padded_vocab, std, seed

    def normal(self, shape: tuple[int, ...], stream: int) -> torch.Tensor:
        """A fresh N(0, std) tensor from stream ``stream`` of the import's seed."""
        g = torch.Generator().manual_seed(self.seed + stream)
        return torch.randn(*shape, generator=g) * self.std

    def extend_vocab(self, base: torch.Tensor, stream: int) -> torch.Tensor:
        """``base`` rows, then fresh rows up to the vocabulary, then zero padding rows."""
        rows = self.normal((self.cfg.vocab_size - base.shape[0], base.shape[1]), stream)
        return torch.cat([base, rows, base.new_zeros(self.padded - self.cfg.vocab_size, base.shape[1])])


class DecoderAdapter:
    """A Mistral-style decoder (RMSNorm, SwiGLU, RoPE, GQA) read from and written to HF safetensors."""

    name = "decoder"
    architectures: tuple[str, ...] = ()
    model_type = "mistral"  # transformers' config type of the exported decoder
    qkv_bias = False  # whether q/k/v carry biases (megatron-core's add_qkv_bias)
    qk_layernorm = False  # whether each head's queries and keys are RMS-normed (megatron-core's qk_layernorm)

    def matches(self, src: HFSource) -> bool:
        """Whether this adapter reads ``src``."""
        return src.architecture in self.architectures

    # -- config, both ways ------------------------------------------------------------------------

    def config_from_hf(self, src: HFSource, added_tokens: int) -> tuple[SoloModelConfig, int]:
        """SoloModelConfig of the imported model and the source's vocabulary size (rows of its embedding).

        ``added_tokens`` SOLO tokens are appended after the source vocabulary. Checks every field
        against the stored tensor shapes.
        """
        c, f = src.config, src.config_file
        for key in ("attention_bias", "mlp_bias"):
            if c.get(key) is True:
                raise ConversionError(f"{f}: field {key!r} = true is not supported ({self.name} has no such biases)")
        try:
            hidden, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
            layers, ffn = int(c["num_hidden_layers"]), int(c["intermediate_size"])
        except KeyError as err:
            raise ConversionError(f"{f}: missing field {err.args[0]!r}") from err
        kv = int(c.get("num_key_value_heads") or heads)
        head_dim = int(c.get("head_dim") or hidden // heads)
        rotary_base, rope_scaling = rope_from_hf(c, f)
        rows, width = src.shape(HF_EMBED)
        if width != hidden:
            raise ConversionError(f"{f}: field 'hidden_size' = {hidden} but {HF_EMBED} is {rows}x{width}")
        cfg_vocab = int(c.get("vocab_size", rows))
        if cfg_vocab != rows:
            raise ConversionError(f"{f}: field 'vocab_size' = {cfg_vocab} but {HF_EMBED} has {rows} rows")
        cfg = SoloModelConfig(
            num_layers=layers, hidden_size=hidden, num_attention_heads=heads, num_query_groups=kv,
            ffn_hidden_size=ffn, vocab_size=rows + added_tokens,
            max_position_embeddings=int(c.get("max_position_embeddings", 4096)),
            norm_epsilon=float(c.get("rms_norm_eps", 1e-5)), rotary_base=rotary_base, rope_scaling=rope_scaling,
            head_dim=None if head_dim * heads == hidden else head_dim,  # stored only where it is not derived
            sliding_window=self.window_from_hf(src), untie_embeddings=not src.tied,
            qkv_bias=self.qkv_bias, qk_layernorm=self.qk_layernorm, decoder_family=self.name,
            vpatch_token_id=rows + 1,  # the SOLO tokens follow the source vocabulary
            first_special_id=rows,
            transformer_impl="local",
        )
        check_layers(src, cfg, self.layer_rules(cfg))
        cfg = self.adjust_config(src, cfg)
        cfg.validate()
        return cfg, rows

    def window_from_hf(self, src: HFSource) -> int | None:
        """The causal sliding window of every layer (config.json's ``sliding_window``), None for none."""
        window = src.config.get("sliding_window")
        return int(window) if window else None

    def adjust_config(self, src: HFSource, cfg: SoloModelConfig) -> SoloModelConfig:
        """Architecture-specific changes to the parsed config (none for a plain decoder)."""
        return cfg

    def config_to_hf(self, cfg: SoloModelConfig, tok, dtype: str) -> dict:
        """The transformers config (as a dict) of ``cfg``'s decoder, as this architecture writes it."""
        from transformers import CONFIG_MAPPING

        fields = dict(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_query_groups, head_dim=cfg.kv_channels, rms_norm_eps=cfg.norm_epsilon,
            max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=False,
            **rope_to_hf(cfg.rotary_base, cfg.rope_scaling),
            bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, dtype=dtype,
        )
        return CONFIG_MAPPING[self.model_type](**fields, **self.window_to_hf(cfg)).to_dict()

    def window_to_hf(self, cfg: SoloModelConfig) -> dict:
        """config.json fields of the sliding window (Mistral's: ``sliding_window``)."""
        return {"sliding_window": cfg.sliding_window}

    # -- tensors, both ways -----------------------------------------------------------------------

    def layer_rules(self, cfg: SoloModelConfig) -> dict[str, Rule]:
        """Megatron layer tensor (canonical name after ``decoder.layers.N.``) -> the rule for its HF tensors."""
        return {**DECODER_LAYER, **(QKV_BIAS if cfg.qkv_bias else {}), **(QK_NORM if cfg.qk_layernorm else {})}

    def from_hf(self, src: HFSource, name: str, cfg: SoloModelConfig, fresh: FreshWeights) -> torch.Tensor:
        """Full megatron tensor of canonical parameter ``name`` (global layer numbering)."""
        if name == EMBEDDING or (name == OUTPUT_LAYER and not cfg.untie_embeddings):
            return fresh.extend_vocab(src.get(HF_EMBED), stream=0)
        if name == OUTPUT_LAYER:
            return fresh.extend_vocab(src.get(HF_HEAD), stream=1)
        if name == PATCH_PROJECTION:
            return self.patch_projection(src, cfg, fresh)
        if name == FINAL_NORM:
            return src.get(HF_NORM)
        _, _, rest = name.partition(".layers.")
        idx, _, rest = rest.partition(".")
        rule = self.layer_rules(cfg).get(rest)
        if rule is None:
            raise ConversionError(f"no HF source for megatron parameter {name!r} in the {self.name} adapter")
        prefix = HF_LAYER.format(int(idx))
        return rule.join([src.get(prefix + part) for part in rule.parts], cfg)

    def to_hf(self, sd: dict[str, torch.Tensor], cfg: SoloModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, tensor) of the decoder in a full megatron state dict (either spec's names), vocabulary unpadded.

        Yields ``lm_head.weight`` only for an untied model (a tied one shares the embedding).
        """
        sd = canonical_state_dict(sd)
        yield HF_EMBED, sd[EMBEDDING][:cfg.vocab_size]
        rules = self.layer_rules(cfg)
        for i in range(cfg.num_layers):
            for m_name, rule in rules.items():
                tensors = rule.split(sd[f"decoder.layers.{i}.{m_name}"], cfg)
                yield from ((HF_LAYER.format(i) + part, t) for part, t in zip(rule.parts, tensors, strict=True))
        yield HF_NORM, sd[FINAL_NORM]
        if cfg.untie_embeddings and OUTPUT_LAYER in sd:
            yield HF_HEAD, sd[OUTPUT_LAYER][:cfg.vocab_size]

    def fit_tokenizer(self, src: HFSource, cfg: SoloModelConfig, src_vocab: int, tok) -> SoloModelConfig:
        """The config once the tokenizer is known: its ids must be exactly the model's rows."""
        if cfg.vocab_size != tok.vocab_size:
            raise ConversionError(f"tokenizer has {tok.vocab_size} ids but the model would have {cfg.vocab_size} rows")
        return cfg

    def source_vocab_rows(self, src: HFSource) -> int:
        """Rows of the source's embedding that come from the source (the rest are new SOLO tokens)."""
        return src.shape(HF_EMBED)[0]

    def patch_projection(self, src: HFSource, cfg: SoloModelConfig, fresh: FreshWeights) -> torch.Tensor:
        """A text-only base has no projection: a fresh one, drawn like the new vocabulary rows."""
        return fresh.normal((cfg.hidden_size, cfg.patch_dim), stream=2)

    def tokenizer(self, src: HFSource, tokenizer: str | None, chat_tokens: bool, close_with_vision: bool):
        """SoloTokenizer on a 32000-piece SentencePiece base, else the HF tokenizer plus the SOLO tokens."""
        cand = Path(tokenizer) if tokenizer else src.directory
        sp_file = cand if cand.is_file() else cand / "tokenizer.model"
        base = self.source_vocab_rows(src)
        if sp_file.is_file() and base == BASE_VOCAB:
            return SoloTokenizer(sp_file, chat_tokens=chat_tokens, close_with_vision=close_with_vision)
        if has_hf_tokenizer(cand):
            from transformers import AutoTokenizer

            return HFSoloTokenizer(AutoTokenizer.from_pretrained(str(cand)), base, chat_tokens, close_with_vision)
        raise ConversionError(
            f"no tokenizer found in {cand} (need tokenizer.model for a 32000-piece base, or a HF tokenizer)"
        )


def has_hf_tokenizer(path: Path) -> bool:
    """Whether ``path`` is a folder holding a transformers tokenizer."""
    return path.is_dir() and any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))


def check_layers(src: HFSource, cfg: SoloModelConfig, rules: dict[str, Rule]) -> None:
    """ConversionError naming the tensor that is missing or whose shape the config does not imply."""
    f = src.config_file
    if src.has(HF_LAYER.format(cfg.num_layers) + "input_layernorm.weight"):
        raise ConversionError(f"{f}: field 'num_hidden_layers' = {cfg.num_layers} but the weights have more layers")
    expect = hf_layer_shapes(cfg, rules)
    for i in range(cfg.num_layers):
        for name, shape in expect.items():
            key = HF_LAYER.format(i) + name
            if not src.has(key):
                raise ConversionError(f"{src.directory}: tensor {key!r} missing (config says {cfg.num_layers} layers)")
            got = src.shape(key)
            if got != shape:
                raise ConversionError(
                    f"{f}: config implies {key} of shape {shape} but the weights hold {got} "
                    "(check hidden_size, num_attention_heads, num_key_value_heads, head_dim, intermediate_size)"
                )


def renamed_decoder(decoder: DecoderAdapter, sd: dict[str, torch.Tensor], cfg: SoloModelConfig, prefix: str,
                    untied_output: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """``decoder.to_hf`` with ``model.`` replaced by ``prefix``; a tied head is written out when ``untied_output``."""
    head = False
    for name, t in decoder.to_hf(sd, cfg):
        head |= name == HF_HEAD
        yield (prefix + name[len("model."):] if name.startswith("model.") else name), t
    if untied_output and not head:
        yield HF_HEAD, sd[EMBEDDING][:cfg.vocab_size]
