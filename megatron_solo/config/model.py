"""SOLO model configuration and presets (solo-7b and small ones for tests)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from megatron_solo.config.choices import check_choices
from megatron_solo.errors import UserInputError
from megatron_solo.vocab.ids import SOLO_VOCAB_SIZE, VISION_START_ID, VPATCH_ID


@dataclass(frozen=True)
class RopeScaling:
    """How RoPE frequencies stretch past the context a base was pre-trained at (Llama-3.1's "llama3", YaRN)."""

    kind: Literal["llama3", "yarn"]
    factor: float
    original_max_positions: int  # the pre-training context (HF's original_max_position_embeddings)
    # llama3: wavelengths over original / low_freq_factor are divided by factor, under original /
    # high_freq_factor kept, and blended between
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    # yarn: the rotation counts bounding the blend of interpolated and original frequencies
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    # yarn: the cos/sin factor is 0.1 ln(factor) + 1, or the ratio of those with mscale and mscale_all_dim
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True  # yarn: round the blend's bounds to whole dimensions

    def validate(self) -> None:
        """Raise ValueError on values no scaling is defined for."""
        check_choices(self)
        if self.factor < 1 or self.original_max_positions < 1:
            raise ValueError(f"rope_scaling needs factor >= 1 and original_max_positions >= 1, got {self}")
        if self.kind == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(f"rope_scaling (llama3) needs high_freq_factor > low_freq_factor, got {self}")


@dataclass
class SoloModelConfig:
    """Shape and numerics of a SOLO decoder; any field can be overridden."""

    num_layers: int = 32
    hidden_size: int = 4096
    num_attention_heads: int = 32
    num_query_groups: int = 8
    ffn_hidden_size: int = 14336
    vocab_size: int = SOLO_VOCAB_SIZE
    max_position_embeddings: int = 32768
    norm_epsilon: float = 1e-5
    rotary_base: float = 10000.0
    sliding_window: int | None = 4096
    untie_embeddings: bool = True
    qkv_bias: bool = False  # q/k/v projections with biases (Qwen2): megatron-core's add_qkv_bias
    # Width of one attention head where it is not hidden_size / num_attention_heads (Qwen3, Mistral-NeMo):
    # megatron-core's kv_channels; None derives it.
    head_dim: int | None = None
    qk_layernorm: bool = False  # RMSNorm over each head's queries and keys (Qwen3): megatron-core's qk_layernorm
    # None: plain RoPE; else Llama-3's scaling (megatron-core's rope_scaling) or YaRN
    # (position_embedding_type="yarn"); a dict (as solo_model.json stores it) is read as RopeScaling
    rope_scaling: RopeScaling | None = None
    # The HF decoder family the weights map to: the importer's and the export's text model
    # (a registered adapter's name in megatron_solo.hf.adapters).
    decoder_family: str = "mistral"
    patch_size: int = 32
    num_channels: int = 3
    init_method_std: float = 0.02
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    vpatch_token_id: int = VPATCH_ID
    # Ids >= this get no loss (the release drops loss on every id >= 32000).
    first_special_id: int = VISION_START_ID
    # "auto": Transformer Engine when it imports and CUDA is present, else local.
    transformer_impl: Literal["auto", "te", "local"] = "auto"
    # Attention over packed documents on the local spec (model/packed_attention.py).
    packed_attention: Literal["auto", "sdpa_mask", "varlen", "flex"] = "auto"
    # Fused SwiGLU and cross-entropy kernels (megatron-core's jit versions): None = on with CUDA.
    fused_kernels: bool | None = None
    fp8: Literal["hybrid", "e4m3"] | None = None  # with Transformer Engine only
    # megatron-core's Fp8Recipe names we configure ("custom" needs a quantizer factory module)
    fp8_recipe: Literal["delayed", "tensorwise", "blockwise", "mxfp8"] = "delayed"
    fp8_amax_history_len: int = 1024
    fp8_amax_compute_algo: Literal["max", "most_recent"] = "max"

    def __post_init__(self) -> None:
        check_choices(self)
        if isinstance(self.rope_scaling, dict):  # TypeError on an unknown or missing key
            self.rope_scaling = RopeScaling(**self.rope_scaling)

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch (3 * 32 * 32 = 3072)."""
        return self.num_channels * self.patch_size * self.patch_size

    @property
    def kv_channels(self) -> int:
        """Width of one attention head: ``head_dim``, else hidden_size / num_attention_heads."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def padded_vocab_size(self, tensor_parallel: int) -> int:
        """Vocabulary padded to a multiple of 128 x lcm(8, tensor_parallel).

        megatron-core needs a multiple of 128 x TP; padding for TP 8 at every TP <= 8
        keeps the embedding the same shape at TP 1, 2, 4 and 8, so a checkpoint loads
        at any of them (33,029 ids -> 33,792 rows, 0.04% more parameters at 7B).
        """
        multiple = 128 * math.lcm(8, tensor_parallel)
        return -(-self.vocab_size // multiple) * multiple

    def with_run_defaults(self) -> SoloModelConfig:
        """This model with the default layer implementation, kernels and precision (how a run computes it).

        What a checkpoint was trained with is recorded, never required: a run or a reader picks its own.
        """
        return dataclasses.replace(self, **{f.name: f.default for f in dataclasses.fields(self)
                                            if f.name in RUN_CHOICES})

    def validate(self) -> None:
        """Raise ValueError on shapes that cannot form a model."""
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads (or head_dim given)")
        if self.head_dim is not None and (self.head_dim < 2 or self.head_dim % 2):
            raise ValueError(f"head_dim must be even and positive (RoPE rotates pairs), got {self.head_dim}")
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError("num_attention_heads must be divisible by num_query_groups")
        if not 0 <= self.vpatch_token_id < self.vocab_size:
            raise ValueError(f"vpatch_token_id {self.vpatch_token_id} outside vocabulary {self.vocab_size}")
        if self.rope_scaling is not None:
            self.rope_scaling.validate()


# SoloModelConfig fields that say how a run computes the model, not what the model is
RUN_CHOICES = ("transformer_impl", "packed_attention", "fused_kernels", "fp8", "fp8_recipe", "fp8_amax_history_len",
               "fp8_amax_compute_algo")

_PRESETS: dict[str, dict] = {
    # Mistral-7B decoder with the SOLO vocabulary.
    "solo-7b": {},
    # A few-million-parameter model for the quick start and integration tests.
    "solo-small": dict(
        num_layers=4, hidden_size=256, num_attention_heads=8, num_query_groups=2,
        ffn_hidden_size=704, max_position_embeddings=4096, sliding_window=None,
    ),
    # The smallest useful model, for unit tests of parallel layouts.
    "solo-tiny": dict(
        num_layers=4, hidden_size=64, num_attention_heads=4, num_query_groups=2,
        ffn_hidden_size=128, max_position_embeddings=1024, sliding_window=None,
    ),
}


def preset_names() -> list[str]:
    """Names accepted by :func:`model_preset`."""
    return sorted(_PRESETS)


def model_preset(name: str, **overrides) -> SoloModelConfig:
    """A preset with any field overridden; UserInputError naming unknown presets or fields, or a bad shape."""
    if name not in _PRESETS:
        raise UserInputError(f"unknown model preset {name!r}; choose one of {preset_names()}")
    return with_overrides(SoloModelConfig(**_PRESETS[name]), overrides, f"model {name}")


def with_overrides(base: SoloModelConfig, overrides: dict, what: str) -> SoloModelConfig:
    """``base`` with ``overrides`` applied and checked; UserInputError naming unknown fields or a bad shape."""
    fields = {f.name for f in dataclasses.fields(SoloModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserInputError(f"unknown SoloModelConfig field(s) {unknown}")
    try:
        cfg = dataclasses.replace(base, **overrides)
        cfg.validate()
    except (TypeError, ValueError) as err:  # what is wrong with the shape (or rope_scaling) the user asked for
        raise UserInputError(f"{what} with overrides {overrides}: {err}") from err
    return cfg
