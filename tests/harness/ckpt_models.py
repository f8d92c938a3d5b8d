"""Small random HF models and helpers for the checkpoint-conversion tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def small_hf_model(kind: str = "mistral", vocab: int = 32000, hidden: int = 64, layers: int = 4,
                   heads: int = 4, kv_heads: int = 2, ffn: int = 96, tied: bool = False, seed: int = 0,
                   max_positions: int = 512, **extra):
    """A random MistralForCausalLM / LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM (fp32).

    ``extra``: more fields of the transformers config (``head_dim``, ``rope_scaling``, ``rope_theta``).
    """
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
                  tie_word_embeddings=tied, rms_norm_eps=1e-5)
    own = {"mistral": dict(sliding_window=None), "qwen2": dict(rope_theta=100000.0),
           "qwen3": dict(rope_theta=100000.0, head_dim=hidden // heads), "llama": dict(rope_theta=50000.0)}[kind]
    family = {"mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "llama": "Llama"}[kind]
    config = getattr(transformers, f"{family}Config")(**common, **{**own, **extra})
    model = getattr(transformers, f"{family}ForCausalLM")(config)
    with torch.no_grad():  # non-trivial norms and biases so a swapped one would show
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def save_hf(model, directory: Path, max_shard_size: str | None = None) -> Path:
    """save_pretrained in safetensors (sharded when ``max_shard_size`` is given)."""
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(directory), **kwargs)
    return directory


def load_safetensors_dir(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF directory (single file or sharded)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [
        "model.safetensors"]
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(directory / f)))
    return out


def decoder_weights(sd: dict[str, torch.Tensor], prefix: str = "model.") -> dict[str, torch.Tensor]:
    """``layers.*`` and ``norm.weight`` under ``prefix``, keyed without it."""
    return {k[len(prefix):]: v for k, v in sd.items()
            if k.startswith(prefix + "layers.") or k == prefix + "norm.weight"}
