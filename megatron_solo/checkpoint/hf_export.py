"""Export a training checkpoint (saved at any TP/PP) to Hugging Face formats.

- ``fuyu``: a ``FuyuForCausalLM`` whose ``text_config`` is a ``MistralConfig``; stock transformers
  loads it with ``AutoModelForCausalLM`` (no remote code). Fuyu REPLACES the embedding at image-token
  positions by ``vision_embed_tokens(patch)``; with the projection's bias set to the ``<vpatch>``
  embedding this equals SOLO's ``embed(<vpatch>) + W patch``. Fuyu's patches are flattened
  (row, col, channel), SOLO's (channel, row, col): the projection's input columns are permuted.
- ``solo``: the SOLO-7B release layout (Mistral keys + ``model.embed_vision_patch.weight``,
  ``architectures`` ["SoloForCausalLM"], ``model_type`` "mistral").

The checkpoint is loaded at TP1 PP1 in one worker process (dist_checkpointing reshards), then
written layer by layer into safetensors shards with an index.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch

from megatron_solo.checkpoint.hf_import import META_FILE, quiet_workers
from megatron_solo.checkpoint.hf_mapping import layer_megatron_to_hf
from megatron_solo.checkpoint.hf_source import INDEX_FILE, PATCH_KEY, ConversionError
from megatron_solo.config.model import SoloModelConfig
from megatron_solo.config.parallel import ParallelConfig

FORMATS = ("fuyu", "solo")
EMBED_KEY = "embedding.word_embeddings.weight"


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, Path]:
    """(save root, iter_N directory) of a checkpoint given either one."""
    from megatron_solo.training.checkpointing import LATEST_FILE, checkpoint_dir, latest_iteration

    path = Path(path)
    if (path / LATEST_FILE).is_file():
        return path, Path(checkpoint_dir(str(path), latest_iteration(str(path))))
    if (path / "metadata.json").is_file() or (path / "common.pt").is_file():
        return path.parent, path
    raise ConversionError(f"{path}: neither a checkpoint directory nor a save root with {LATEST_FILE}")


def read_model_metadata(root: Path, meta_file: str | os.PathLike | None = None) -> dict:
    """solo_model.json of a checkpoint (written by the importer, or by hand for training runs)."""
    meta_path = Path(meta_file) if meta_file else root / META_FILE
    if not meta_path.is_file():
        raise ConversionError(f"{meta_path}: missing; pass the model config (solo_model.json) of this checkpoint")
    return json.loads(meta_path.read_text())


def check_checkpoint(ckpt: Path, meta: dict, meta_path: Path) -> int:
    """Validate the checkpoint against its metadata; returns the stored (padded) vocabulary rows."""
    from megatron.core import dist_checkpointing

    cfg = SoloModelConfig(**meta["model"])
    try:
        common = dist_checkpointing.load_common_state_dict(str(ckpt))
    except Exception as err:
        raise ConversionError(f"{ckpt}: cannot read the checkpoint's common state ({err})") from err
    layout = (common.get("train_state") or {}).get("layout")
    if layout is not None and "tensor_parallel" in meta:
        pp, tp = int(layout[0]), int(layout[1])
        if (tp, pp) != (meta["tensor_parallel"], meta.get("pipeline_parallel", 1)):
            raise ConversionError(
                f"{meta_path}: fields tensor_parallel/pipeline_parallel = {meta['tensor_parallel']}/"
                f"{meta.get('pipeline_parallel', 1)} but {ckpt} was saved at TP{tp} PP{pp}"
            )
    tensors = dist_checkpointing.load_tensors_metadata(str(ckpt))
    embed = next((v for k, v in tensors.items() if k.endswith(EMBED_KEY)), None)
    if embed is None:
        raise ConversionError(f"{ckpt}: no {EMBED_KEY} in the checkpoint")
    rows, width = embed.global_shape
    if width != cfg.hidden_size or rows < cfg.vocab_size:
        raise ConversionError(
            f"{meta_path}: field model.hidden_size/vocab_size = {cfg.hidden_size}/{cfg.vocab_size} but {ckpt} "
            f"stores {EMBED_KEY} as {rows}x{width}"
        )
    qkv = next((v for k, v in tensors.items() if k.endswith("linear_qkv.weight")), None)
    if qkv is not None and qkv.global_shape[0] != cfg.num_layers:
        raise ConversionError(f"{meta_path}: field model.num_layers = {cfg.num_layers} but {ckpt} stores "
                              f"{qkv.global_shape[0]} layers")
    return rows


class ShardWriter:
    """Collect tensors and write safetensors shards of about ``max_bytes`` plus the index json."""

    def __init__(self, out_dir: Path, max_bytes: int, dtype: torch.dtype | None):
        self.out_dir, self.max_bytes, self.dtype = out_dir, max_bytes, dtype
        self.pending: dict[str, torch.Tensor] = {}
        self.size, self.files, self.weight_map, self.total = 0, [], {}, 0

    def add(self, name: str, t: torch.Tensor) -> None:
        """Queue one tensor (converted to the export dtype, contiguous)."""
        t = t.detach().to(self.dtype) if self.dtype is not None else t.detach()
        if t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # a view into a larger tensor: safetensors refuses shared storage
        self.pending[name] = t.contiguous()
        self.size += t.numel() * t.element_size()
        if self.size >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the queued tensors as one shard."""
        from safetensors.torch import save_file

        if not self.pending:
            return
        fname = f"model-{len(self.files) + 1:05d}.safetensors"
        save_file(self.pending, str(self.out_dir / fname), metadata={"format": "pt"})
        self.files.append(fname)
        self.weight_map.update({k: fname for k in self.pending})
        self.total += self.size
        self.pending, self.size = {}, 0

    def finish(self) -> None:
        """Flush, give shards their final names and write model.safetensors.index.json."""
        self.flush()
        n = len(self.files)
        rename = {f: f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i, f in enumerate(self.files)}
        for old, new in rename.items():
            os.replace(self.out_dir / old, self.out_dir / new)
        index = {"metadata": {"total_size": self.total}, "weight_map": {k: rename[v] for k, v in self.weight_map.items()}}
        (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2))


def fuyu_projection(weight: torch.Tensor, cfg: SoloModelConfig) -> torch.Tensor:
    """Permute the projection's input columns from SOLO's (channel, row, col) to Fuyu's (row, col, channel)."""
    p, c = cfg.patch_size, cfg.num_channels
    return weight.reshape(-1, c, p, p).permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def write_weights(sd: dict[str, torch.Tensor], cfg: SoloModelConfig, fmt: str, writer: ShardWriter,
                  progress: bool = False) -> None:
    """Stream the full TP1 megatron state dict into ``writer`` in format ``fmt``."""
    from tqdm import tqdm

    lm = "model.language_model." if fmt == "fuyu" else "model."
    vocab = cfg.vocab_size
    embed = sd[EMBED_KEY]
    writer.add(lm + "embed_tokens.weight", embed[:vocab])
    for i in tqdm(range(cfg.num_layers), desc=f"export {fmt}", disable=not progress, unit="layer"):
        for name, t in layer_megatron_to_hf(sd, i, cfg).items():
            writer.add(lm + name, t)
    writer.add(lm + "norm.weight", sd["decoder.final_layernorm.weight"])
    if "output_layer.weight" in sd and cfg.untie_embeddings:
        writer.add("lm_head.weight", sd["output_layer.weight"][:vocab])
    elif fmt == "fuyu":
        writer.add("lm_head.weight", embed[:vocab])  # Fuyu unties: write the shared matrix twice
    proj = sd["patch_projection.weight"]
    if fmt == "fuyu":
        writer.add("model.vision_embed_tokens.weight", fuyu_projection(proj, cfg))
        writer.add("model.vision_embed_tokens.bias", embed[cfg.vpatch_token_id])
    else:
        writer.add(PATCH_KEY, proj)
    writer.finish()


def load_solo_model(checkpoint: str | os.PathLike, parallel: ParallelConfig | None = None,
                    model_meta: str | os.PathLike | None = None, *,
                    in_place: bool = False) -> tuple[list[torch.nn.Module], SoloModelConfig]:
    """Inside an initialized world: this rank's SoloModel chunks loaded from ``checkpoint`` at ``parallel``.

    The stored (padded) vocabulary is kept, whatever TP it was padded for; the returned config has the
    true vocabulary size (slice logits to ``cfg.vocab_size``). ``in_place`` (TP1): weights only, read
    straight into the parameters (what export uses to bound memory).
    """
    from megatron_solo.model.builder import solo_provider
    from megatron_solo.training.checkpointing import load_checkpoint
    from megatron_solo.training.model_build import build_model_chunks

    parallel = parallel or ParallelConfig()
    root, ckpt = resolve_checkpoint(checkpoint)
    meta_path = Path(model_meta) if model_meta else root / META_FILE
    meta = read_model_metadata(root, meta_path)
    rows = check_checkpoint(ckpt, meta, meta_path)
    cfg = SoloModelConfig(**meta["model"])
    load_cfg = dataclasses.replace(cfg, vocab_size=rows, transformer_impl="local")
    if load_cfg.padded_vocab_size(parallel.tensor_parallel) != rows:
        raise ConversionError(f"{ckpt}: {rows} vocabulary rows cannot be split over TP{parallel.tensor_parallel}")
    chunks = build_model_chunks(solo_provider(load_cfg, parallel), parallel)
    if in_place and parallel.tensor_parallel == 1:
        for chunk in chunks:
            load_in_place(str(ckpt), chunk)
    else:
        load_checkpoint(str(ckpt), chunks, load_rng=False)
    return chunks, cfg


def load_in_place(ckpt: str, chunk: torch.nn.Module) -> None:
    """Load a TP1 chunk's weights straight into its parameters (no second copy of the model).

    megatron-core describes SwiGLU fc1 by a factory (gate and up halves, merged into a new tensor
    after loading); at TP1 the stored [gate; up] block of a layer IS the parameter, so fc1 is asked
    for as one plain ShardedTensor and read in place like every other weight.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    sharded = chunk.sharded_state_dict()
    params = {p.data_ptr(): p for p in chunk.parameters()}
    for key, value in list(sharded.items()):
        if not isinstance(value, ShardedTensorFactory):
            continue
        gate = next(iter(_flat(value.build())))
        layers = gate.global_shape[0] if gate.prepend_axis_num else None
        rank_offsets = [(0, gate.global_offset[0], layers)] if layers else []
        sharded[key] = ShardedTensor.from_rank_offsets(
            value.key, value.data, *rank_offsets, replica_id=gate.replica_id,
            prepend_axis_num=gate.prepend_axis_num,
        )
    loaded = dist_checkpointing.load(sharded, ckpt)
    for name, t in loaded.items():
        if torch.is_tensor(t) and "_extra_state" not in name:
            p = params.get(t.data_ptr())
            if p is None:  # not read in place: copy
                chunk.state_dict()[name].copy_(t)
    del loaded


def _flat(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _flat(v)
    elif isinstance(x, list | tuple):
        for v in x:
            yield from _flat(v)
    else:
        yield x


def _export_worker(ckpt: str, out_dir: str, meta_path: str, fmt: str, max_bytes: int,
                   dtype: str | None, progress: bool) -> None:
    from megatron_solo.platform import init_parallel

    quiet_workers()
    parallel = ParallelConfig()
    init_parallel(parallel, seed=0)
    chunks, cfg = load_solo_model(ckpt, parallel, meta_path, in_place=True)
    sd = {k: v for k, v in chunks[0].state_dict().items() if torch.is_tensor(v) and "_extra_state" not in k}
    writer = ShardWriter(Path(out_dir), max_bytes, getattr(torch, dtype) if dtype else None)
    write_weights(sd, cfg, fmt, writer, progress)


def hf_text_config(cfg: SoloModelConfig, tok, dtype: str):
    """The MistralConfig of the exported decoder."""
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups, head_dim=cfg.kv_channels, rms_norm_eps=cfg.norm_epsilon,
        rope_theta=cfg.rotary_base, sliding_window=cfg.sliding_window,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=False,
        bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, dtype=dtype,
    )


def write_config(out_dir: Path, cfg: SoloModelConfig, tok, fmt: str, dtype: str) -> None:
    """config.json (+ generation_config.json) of the exported model."""
    from transformers import FuyuConfig, GenerationConfig

    text = hf_text_config(cfg, tok, dtype)
    if fmt == "fuyu":
        top = FuyuConfig(
            text_config=text.to_dict(), patch_size=cfg.patch_size, num_channels=cfg.num_channels,
            image_size=1024, image_token_id=cfg.vpatch_token_id, tie_word_embeddings=False,
        ).to_dict()
        # transformers 4.x reads these at the top level
        top.update(hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size, architectures=["FuyuForCausalLM"])
        top.update(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, dtype=dtype)
    else:
        top = text.to_dict()
        top.update(architectures=["SoloForCausalLM"], model_type="mistral",
                   tie_word_embeddings=not cfg.untie_embeddings, patch_size=cfg.patch_size,
                   num_channels=cfg.num_channels, vpatch_token_id=cfg.vpatch_token_id)
    (out_dir / "config.json").write_text(json.dumps(top, indent=2, sort_keys=True))
    GenerationConfig(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id).save_pretrained(
        str(out_dir))


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    fmt: str = "fuyu",
    *,
    model_meta: str | os.PathLike | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    dtype: str | None = None,
    max_shard_bytes: int = 512 << 20,
    progress: bool = True,
) -> Path:
    """Export ``checkpoint`` (save root or iter_N dir) to ``out_dir`` as ``fmt`` ("fuyu" or "solo").

    ``model_meta`` defaults to ROOT/solo_model.json and ``tokenizer_dir`` to ROOT/tokenizer.
    ``dtype``: e.g. "bfloat16" to cast; None keeps the stored precision.
    """
    from megatron_solo.checkpoint.processor import SoloProcessor
    from megatron_solo.checkpoint.tokenizers import load_tokenizer
    from megatron_solo.data.tokenizer import TokenizerMismatchError
    from megatron_solo.platform import spawn

    if fmt not in FORMATS:
        raise ConversionError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    root, ckpt = resolve_checkpoint(checkpoint)
    meta_path = Path(model_meta) if model_meta else root / META_FILE
    meta = read_model_metadata(root, meta_path)
    cfg = SoloModelConfig(**meta["model"])
    check_checkpoint(ckpt, meta, meta_path)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else root / "tokenizer"
    tok = load_tokenizer(tok_dir)
    if tok.vpatch_id != cfg.vpatch_token_id or tok.vocab_size > cfg.vocab_size:
        raise TokenizerMismatchError(
            f"{tok_dir}: <vpatch> id {tok.vpatch_id} / {tok.vocab_size} ids do not fit the model "
            f"(vpatch_token_id {cfg.vpatch_token_id}, vocab_size {cfg.vocab_size})"
        )
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    spawn(_export_worker, 1, str(ckpt), str(out), str(meta_path), fmt, max_shard_bytes, dtype, progress)
    write_config(out, cfg, tok, fmt, dtype or "float32")
    tok.save_pretrained(out)
    if fmt == "fuyu":
        SoloProcessor(tok, patch_size=cfg.patch_size).save_pretrained(out)
    return out
