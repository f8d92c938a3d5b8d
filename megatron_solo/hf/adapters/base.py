"""The Mistral-style decoder every adapter starts from: config, tensors and tokenizer of a HF source.

An adapter owns what one HF architecture needs: whether it reads a source (``matches``), the
SoloModelConfig from its config.json (``model_config``), the full megatron tensor of every
parameter (``tensor``: per-layer names through :mod:`megatron_solo.hf.weights`), its tokenizer rule
(``tokenizer``) and, where it is an export target, the config.json it writes (``export_config``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_solo.config.model import SoloModelConfig
from megatron_solo.hf.source import ConversionError, HFSource
from megatron_solo.hf.weights import hf_layer_tensor
from megatron_solo.vocab import BASE_VOCAB, HFSoloTokenizer, SoloTokenizer

EMBED = "embedding.word_embeddings.weight"
OUTPUT = "output_layer.weight"
PATCH = "patch_projection.weight"


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
    """A Mistral-style decoder (RMSNorm, SwiGLU, RoPE, GQA, no biases) read from HF safetensors."""

    name = "decoder"
    architectures: tuple[str, ...] = ()
    sliding_window = True  # whether config.json's sliding_window applies

    def matches(self, src: HFSource) -> bool:
        """Whether this adapter reads ``src``."""
        return src.architecture in self.architectures

    def model_config(self, src: HFSource, added_tokens: int) -> tuple[SoloModelConfig, int]:
        """SoloModelConfig of the imported model and the source's vocabulary size (rows of its embedding).

        ``added_tokens`` SOLO tokens are appended after the source vocabulary. Checks every field
        against the stored tensor shapes.
        """
        c, f = src.config, src.config_file
        for key, bad in (("attention_bias", True), ("mlp_bias", True)):
            if c.get(key) is bad:
                raise ConversionError(f"{f}: field {key!r} = true is not supported (SOLO's decoder has no biases)")
        act = c.get("hidden_act", "silu")
        if act != "silu":
            raise ConversionError(f"{f}: field 'hidden_act' = {act!r}; only SwiGLU ('silu') is supported")
        try:
            hidden, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
            layers, ffn = int(c["num_hidden_layers"]), int(c["intermediate_size"])
        except KeyError as err:
            raise ConversionError(f"{f}: missing field {err.args[0]!r}") from err
        kv = int(c.get("num_key_value_heads") or heads)
        head_dim = c.get("head_dim") or hidden // heads
        if head_dim * heads != hidden:
            raise ConversionError(f"{f}: field 'head_dim' = {head_dim} != hidden_size / num_attention_heads")
        rows, width = src.shape("model.embed_tokens.weight")
        if width != hidden:
            raise ConversionError(f"{f}: field 'hidden_size' = {hidden} but model.embed_tokens.weight is {rows}x{width}")
        cfg_vocab = int(c.get("vocab_size", rows))
        if cfg_vocab != rows:
            raise ConversionError(f"{f}: field 'vocab_size' = {cfg_vocab} but model.embed_tokens.weight has {rows} rows")
        check_layers(src, layers, hidden, heads, kv, head_dim, ffn)
        vocab = rows + added_tokens
        window = c.get("sliding_window") if self.sliding_window else None
        cfg = SoloModelConfig(
            num_layers=layers, hidden_size=hidden, num_attention_heads=heads, num_query_groups=kv,
            ffn_hidden_size=ffn, vocab_size=vocab,
            max_position_embeddings=int(c.get("max_position_embeddings", 4096)),
            norm_epsilon=float(c.get("rms_norm_eps", 1e-5)), rotary_base=_rope_theta(c, f),
            sliding_window=int(window) if window else None, untie_embeddings=not src.tied,
            vpatch_token_id=rows + 1,  # the SOLO tokens follow the source vocabulary
            first_special_id=rows,
            transformer_impl="local",
        )
        cfg = self.adjust_config(src, cfg)
        cfg.validate()
        return cfg, rows

    def adjust_config(self, src: HFSource, cfg: SoloModelConfig) -> SoloModelConfig:
        """Architecture-specific changes to the parsed config (none for a plain decoder)."""
        return cfg

    def fit_tokenizer(self, src: HFSource, cfg: SoloModelConfig, src_vocab: int, tok) -> SoloModelConfig:
        """The config once the tokenizer is known: its ids must be exactly the model's rows."""
        if cfg.vocab_size != tok.vocab_size:
            raise ConversionError(f"tokenizer has {tok.vocab_size} ids but the model would have {cfg.vocab_size} rows")
        return cfg

    def source_vocab_rows(self, src: HFSource) -> int:
        """Rows of the source's embedding that come from the source (the rest are new SOLO tokens)."""
        return src.shape("model.embed_tokens.weight")[0]

    def tensor(self, src: HFSource, name: str, cfg: SoloModelConfig, fresh: FreshWeights) -> torch.Tensor:
        """Full megatron tensor of canonical parameter ``name`` (global layer numbering)."""
        if name == EMBED or (name == OUTPUT and not cfg.untie_embeddings):
            return fresh.extend_vocab(src.get("model.embed_tokens.weight"), stream=0)
        if name == OUTPUT:
            return fresh.extend_vocab(src.get("lm_head.weight"), stream=1)
        if name == PATCH:
            return self.patch_projection(src, cfg, fresh)
        if name == "decoder.final_layernorm.weight":
            return src.get("model.norm.weight")
        _, _, rest = name.partition(".layers.")
        idx, _, rest = rest.partition(".")
        try:
            return hf_layer_tensor(src.get, int(idx), rest, cfg)
        except (KeyError, ValueError) as err:
            raise ConversionError(f"no HF source for megatron parameter {name!r}") from err

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


def _rope_theta(cfg: dict, cfg_file: Path) -> float:
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    if scaling:
        raise ConversionError(f"{cfg_file}: field 'rope_scaling' = {scaling!r} is not supported (plain RoPE only)")
    return float(cfg.get("rope_theta") or params.get("rope_theta") or 10000.0)


def check_layers(src: HFSource, layers: int, hidden: int, heads: int, kv: int, head_dim: int, ffn: int) -> None:
    """ConversionError naming the tensor whose shape the config does not imply."""
    f = src.config_file
    expect = {
        "self_attn.q_proj.weight": (heads * head_dim, hidden),
        "self_attn.k_proj.weight": (kv * head_dim, hidden),
        "self_attn.v_proj.weight": (kv * head_dim, hidden),
        "self_attn.o_proj.weight": (hidden, heads * head_dim),
        "mlp.gate_proj.weight": (ffn, hidden),
        "mlp.up_proj.weight": (ffn, hidden),
        "mlp.down_proj.weight": (hidden, ffn),
        "input_layernorm.weight": (hidden,),
        "post_attention_layernorm.weight": (hidden,),
    }
    if src.has(f"model.layers.{layers}.input_layernorm.weight"):
        raise ConversionError(f"{f}: field 'num_hidden_layers' = {layers} but the weights have more layers")
    for i in range(layers):
        for name, shape in expect.items():
            key = f"model.layers.{i}.{name}"
            if not src.has(key):
                raise ConversionError(f"{src.directory}: tensor {key!r} missing (config says {layers} layers)")
            got = src.shape(key)
            if got != shape:
                raise ConversionError(
                    f"{f}: config implies {key} of shape {shape} but the weights hold {got} "
                    "(check hidden_size, num_attention_heads, num_key_value_heads, head_dim, intermediate_size)"
                )
