"""Read a Hugging Face model directory lazily: config, architecture, safetensors (single or sharded).

Supported: ``MistralForCausalLM``, ``LlamaForCausalLM`` (tied embeddings too) and the SOLO-7B
release (``SoloForCausalLM``, or any Mistral checkpoint carrying ``model.embed_vision_patch.weight``).
Every error names the file or the config field at fault.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megatron_solo.config.model import SoloModelConfig

SUPPORTED_ARCHITECTURES = ("MistralForCausalLM", "LlamaForCausalLM", "SoloForCausalLM")
PATCH_KEY = "model.embed_vision_patch.weight"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class ConversionError(ValueError):
    """An input that cannot be converted; the message names the file or field at fault."""


@dataclass
class HFSource:
    """A HF checkpoint directory: parsed config.json and a lazy tensor reader over its safetensors."""

    directory: Path
    config: dict
    architecture: str
    weight_map: dict[str, str]  # tensor name -> file name (relative to directory)
    _handles: dict[str, object] = field(default_factory=dict, repr=False)

    @property
    def config_file(self) -> Path:
        """Path of config.json."""
        return self.directory / "config.json"

    @property
    def is_solo_release(self) -> bool:
        """True for the SOLO-7B release format (patch projection stored with the weights)."""
        return PATCH_KEY in self.weight_map

    @property
    def tied(self) -> bool:
        """Whether the output layer shares the input embedding."""
        return bool(self.config.get("tie_word_embeddings", False)) or "lm_head.weight" not in self.weight_map

    def _handle(self, file: str):
        from safetensors import safe_open

        if file not in self._handles:
            self._handles[file] = safe_open(str(self.directory / file), framework="pt")
        return self._handles[file]

    def has(self, name: str) -> bool:
        """Whether the checkpoint stores tensor ``name``."""
        return name in self.weight_map

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor ``name`` without reading its data."""
        return tuple(self._handle(self.weight_map[name]).get_slice(name).get_shape())

    def get(self, name: str, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """Read one tensor (only it) from its shard; ConversionError naming the shard if absent."""
        if name not in self.weight_map:
            raise ConversionError(f"{self.directory}: tensor {name!r} not found in any safetensors file")
        t = self._handle(self.weight_map[name]).get_tensor(name)
        return t.to(dtype) if dtype is not None else t

    def close(self) -> None:
        """Drop the open file handles."""
        self._handles.clear()


def open_hf(directory: str | os.PathLike) -> HFSource:
    """Parse ``directory``'s config.json and locate every tensor; ConversionError on unusable input."""
    directory = Path(directory)
    cfg_file = directory / "config.json"
    if not cfg_file.is_file():
        raise ConversionError(f"{cfg_file}: not found (expected a Hugging Face model directory)")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{cfg_file}: not valid JSON ({err})") from err
    archs = config.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ConversionError(
            f"{cfg_file}: field 'architectures' is {archs!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = dict(json.loads(index.read_text())["weight_map"])
        missing = sorted({f for f in weight_map.values() if not (directory / f).is_file()})
        if missing:
            raise ConversionError(f"{index}: names shard(s) {missing} that are missing from {directory}")
    elif (directory / SINGLE_FILE).is_file():
        from safetensors import safe_open

        with safe_open(str(directory / SINGLE_FILE), framework="pt") as f:
            weight_map = {k: SINGLE_FILE for k in f.keys()}
    else:
        raise ConversionError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} found (only safetensors)")
    src = HFSource(directory, config, arch, weight_map)
    if arch == "SoloForCausalLM" and not src.is_solo_release:
        raise ConversionError(f"{cfg_file}: architecture SoloForCausalLM but no tensor {PATCH_KEY!r} in the weights")
    return src


def _rope_theta(cfg: dict, cfg_file: Path) -> float:
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    if scaling:
        raise ConversionError(f"{cfg_file}: field 'rope_scaling' = {scaling!r} is not supported (plain RoPE only)")
    return float(cfg.get("rope_theta") or params.get("rope_theta") or 10000.0)


def model_config_from_hf(src: HFSource, added_tokens: int) -> tuple[SoloModelConfig, int]:
    """SoloModelConfig of the imported model and the source's vocabulary size (rows of its embedding).

    ``added_tokens`` SOLO tokens are appended after the source vocabulary unless the source already
    has them (the SOLO-7B release). Checks every field against the stored tensor shapes.
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
    _check_layers(src, layers, hidden, heads, kv, head_dim, ffn)
    vocab = rows if src.is_solo_release else rows + added_tokens
    window = c.get("sliding_window") if src.architecture != "LlamaForCausalLM" else None
    cfg = SoloModelConfig(
        num_layers=layers, hidden_size=hidden, num_attention_heads=heads, num_query_groups=kv,
        ffn_hidden_size=ffn, vocab_size=vocab,
        max_position_embeddings=int(c.get("max_position_embeddings", 4096)),
        norm_epsilon=float(c.get("rms_norm_eps", 1e-5)), rotary_base=_rope_theta(c, f),
        sliding_window=int(window) if window else None, untie_embeddings=not src.tied,
        vpatch_token_id=(32001 if src.is_solo_release else rows + 1),
        first_special_id=(32000 if src.is_solo_release else rows),
        transformer_impl="local",
    )
    if src.is_solo_release and src.shape(PATCH_KEY) != (hidden, cfg.patch_dim):
        raise ConversionError(f"{f}: {PATCH_KEY} has shape {src.shape(PATCH_KEY)}, expected ({hidden}, {cfg.patch_dim})")
    cfg.validate()
    return cfg, rows


def _check_layers(src: HFSource, layers: int, hidden: int, heads: int, kv: int, head_dim: int, ffn: int) -> None:
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
