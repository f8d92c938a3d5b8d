"""Import HF Mistral/Llama (or the SOLO-7B release) into a megatron-core dist_checkpointing checkpoint.

One process per model-parallel rank (TP x PP) builds its SoloModel chunks at the target layout and
fills each parameter with its slice of the HF tensor, read lazily (one tensor at a time) from the
safetensors shards; then the chunks are saved with :func:`save_checkpoint`. Output layout::

    OUT/iter_0000000/           the checkpoint (torch_dist, loadable at any TP/PP)
    OUT/latest_checkpointed_iteration.txt
    OUT/solo_model.json         SoloModelConfig + the layout it was saved at
    OUT/tokenizer/              the tokenizer with the SOLO tokens
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from megatron_solo.checkpoint.hf_mapping import hf_layer_tensor
from megatron_solo.checkpoint.hf_source import (
    PATCH_KEY,
    ConversionError,
    HFSource,
    model_config_from_hf,
    open_hf,
)
from megatron_solo.config.model import SoloModelConfig
from megatron_solo.config.parallel import ParallelConfig

META_FILE = "solo_model.json"


def write_metadata(out_dir: str | os.PathLike, cfg: SoloModelConfig, parallel: ParallelConfig, **extra) -> None:
    """Write OUT/solo_model.json: the model config and the layout the checkpoint was saved at."""
    meta = {"model": dataclasses.asdict(cfg), "tensor_parallel": parallel.tensor_parallel,
            "pipeline_parallel": parallel.pipeline_parallel, **extra}
    Path(out_dir, META_FILE).write_text(json.dumps(meta, indent=2))


class _Filler:
    """Full (unsharded) megatron tensors computed from the HF source, one at a time."""

    def __init__(self, src: HFSource, cfg: SoloModelConfig, src_vocab: int, padded: int, std: float, seed: int):
        self.src, self.cfg, self.src_vocab, self.padded = src, cfg, src_vocab, padded
        self.std, self.seed = std, seed

    def _vocab_rows(self, base: torch.Tensor, seed: int) -> torch.Tensor:
        new = self.cfg.vocab_size - base.shape[0]
        g = torch.Generator().manual_seed(seed)
        rows = torch.randn(new, base.shape[1], generator=g) * self.std
        return torch.cat([base, rows, base.new_zeros(self.padded - self.cfg.vocab_size, base.shape[1])])

    def full(self, name: str) -> torch.Tensor:
        """The full megatron tensor of parameter ``name`` (global layer numbering)."""
        s, cfg = self.src, self.cfg
        if name == "embedding.word_embeddings.weight" or (name == "output_layer.weight" and not cfg.untie_embeddings):
            return self._vocab_rows(s.get("model.embed_tokens.weight"), self.seed)
        if name == "output_layer.weight":
            return self._vocab_rows(s.get("lm_head.weight"), self.seed + 1)
        if name == "patch_projection.weight":
            if s.is_solo_release:
                return s.get(PATCH_KEY)
            g = torch.Generator().manual_seed(self.seed + 2)
            return torch.randn(cfg.hidden_size, cfg.patch_dim, generator=g) * self.std
        if name == "decoder.final_layernorm.weight":
            return s.get("model.norm.weight")
        _, _, rest = name.partition(".layers.")
        idx, _, rest = rest.partition(".")
        try:
            return hf_layer_tensor(s.get, int(idx), rest, cfg)
        except (KeyError, ValueError) as err:
            raise ConversionError(f"no HF source for megatron parameter {name!r}") from err


def tp_slice(full: torch.Tensor, param: torch.Tensor, name: str, rank: int, size: int) -> torch.Tensor:
    """This tensor-parallel rank's part of ``full`` (SwiGLU fc1: gate and up split separately)."""
    if not getattr(param, "tensor_model_parallel", False) or size == 1:
        return full
    if name.endswith("mlp.linear_fc1.weight"):
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(size, 0)[rank], up.chunk(size, 0)[rank]])
    return full.chunk(size, dim=param.partition_dim)[rank]


def global_name(chunk: torch.nn.Module, name: str) -> str:
    """Parameter name with the local (per pipeline stage) layer index replaced by the global one."""
    if not name.startswith("decoder.layers."):
        return name
    idx, _, rest = name[len("decoder.layers."):].partition(".")
    number = chunk.decoder.layers[int(idx)].layer_number  # 1-based, global
    return f"decoder.layers.{number - 1}.{rest}"


def fill_chunks(chunks: list[torch.nn.Module], filler: _Filler, progress: bool) -> None:
    """Copy every parameter of this rank's chunks from the HF source."""
    from megatron.core import parallel_state as ps
    from tqdm import tqdm

    rank, size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    show = progress and torch.distributed.get_rank() == 0
    for chunk in chunks:
        params = list(chunk.named_parameters())
        groups: dict[str, list] = {}
        for name, p in params:
            gname = global_name(chunk, name)
            group = "layer " + gname.split(".")[2] if gname.startswith("decoder.layers.") else gname.split(".")[0]
            groups.setdefault(group, []).append((gname, p))
        for members in tqdm(groups.values(), desc="import (rank 0)", disable=not show, unit="group"):
            for gname, p in members:
                part = tp_slice(filler.full(gname), p, gname, rank, size)
                if tuple(part.shape) != tuple(p.shape):
                    raise ConversionError(
                        f"{gname}: HF tensor slice has shape {tuple(part.shape)}, model expects {tuple(p.shape)}"
                    )
                with torch.no_grad():
                    p.copy_(part)
                del part


def quiet_workers() -> None:
    """Silence megatron-core's start-up warnings (no TE/Apex, deprecations) in conversion workers."""
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def check_layout(cfg: SoloModelConfig, parallel: ParallelConfig, config_file) -> None:
    """ConversionError naming the config field that megatron-core cannot split over the TP size."""
    tp = parallel.tensor_parallel
    fields = {"num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_query_groups,
              "intermediate_size": cfg.ffn_hidden_size}
    for name, value in fields.items():
        if value % tp:
            raise ConversionError(f"{config_file}: field {name!r} = {value} is not divisible by tensor_parallel {tp}")


class _Prebuilt(torch.nn.Module):
    """Stands in for a model chunk in save_checkpoint: returns a prepared sharded state dict."""

    def __init__(self, sharded: dict):
        super().__init__()
        self._sharded = sharded

    def sharded_state_dict(self) -> dict:
        """The prepared dict."""
        return self._sharded


def own_storage_sharded_state_dict(chunk: torch.nn.Module) -> dict:
    """The chunk's sharded state dict with factories built and their views moved to own storage.

    megatron-core's checkpoint writer clones every tensor that is a view (SwiGLU fc1 is saved as its
    gate and up halves: views), which would hold ~1.5 copies of the weights at once. Here each fc1
    is split into owned halves one at a time and the parameter's storage is released (the chunk is
    only saved afterwards, never used again).
    """
    from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    sharded = chunk.sharded_state_dict()
    params = {p.data_ptr(): p for p in chunk.parameters()}
    for key, value in list(sharded.items()):
        if not isinstance(value, ShardedTensorFactory):
            continue
        built = value.build()

        def own(x):
            if isinstance(x, ShardedTensor) and x.data is not None:
                x.data = x.data.clone()
            return x

        dict_list_map_inplace(own, built)
        param = params.get(value.data.data_ptr())
        if param is not None:
            param.data = torch.empty(0, dtype=param.dtype)
        sharded[key] = built
    return sharded


def _import_worker(src_dir: str, out_dir: str, cfg_dict: dict, parallel: ParallelConfig, src_vocab: int,
                   std: float, seed: int, progress: bool) -> None:
    from megatron_solo.model.builder import solo_provider
    from megatron_solo.platform import init_parallel
    from megatron_solo.training.checkpointing import TrainState, save_checkpoint
    from megatron_solo.training.model_build import build_model_chunks

    quiet_workers()
    init_parallel(parallel, seed=seed)
    cfg = SoloModelConfig(**cfg_dict)
    src = open_hf(src_dir)
    chunks = build_model_chunks(solo_provider(cfg, parallel), parallel)
    filler = _Filler(src, cfg, src_vocab, cfg.padded_vocab_size(parallel.tensor_parallel), std, seed)
    fill_chunks(chunks, filler, progress)
    src.close()
    prebuilt = [_Prebuilt(own_storage_sharded_state_dict(c)) for c in chunks]
    del chunks
    save_checkpoint(out_dir, TrainState(iteration=0), prebuilt)


def import_hf(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    parallel: ParallelConfig | None = None,
    *,
    tokenizer: str | None = None,
    chat_tokens: bool = True,
    close_with_vision: bool = False,
    init_std: float = 0.02,
    seed: int = 1234,
    progress: bool = True,
) -> SoloModelConfig:
    """Convert a HF model directory into OUT (checkpoint + solo_model.json + tokenizer/); returns the config.

    Runs TP x PP worker processes. ``tokenizer``: a SentencePiece file or HF tokenizer directory
    when ``src_dir`` has none. New vocabulary rows and a fresh patch projection are drawn from
    N(0, init_std) with ``seed`` (the SOLO-7B release keeps its own rows and projection).
    """
    from megatron_solo.checkpoint.tokenizers import tokenizer_for_import
    from megatron_solo.platform import spawn

    parallel = parallel or ParallelConfig()
    src = open_hf(src_dir)
    tok = tokenizer_for_import(src.directory, src.shape("model.embed_tokens.weight")[0], tokenizer,
                               chat_tokens, close_with_vision, src.is_solo_release)
    added = len(tok.added_tokens)
    cfg, src_vocab = model_config_from_hf(src, added)
    if src.is_solo_release:
        if src_vocab < tok.vocab_size:
            raise ConversionError(f"{src.config_file}: vocab_size {src_vocab} < the tokenizer's {tok.vocab_size} ids")
        cfg = dataclasses.replace(cfg, vpatch_token_id=tok.vpatch_id, first_special_id=tok.vision_id)
    elif cfg.vocab_size != tok.vocab_size:
        raise ConversionError(f"tokenizer has {tok.vocab_size} ids but the model would have {cfg.vocab_size} rows")
    src.close()
    check_layout(cfg, parallel, src.config_file)
    if cfg.num_layers % parallel.pipeline_parallel:
        raise ConversionError(f"num_hidden_layers {cfg.num_layers} not divisible by pipeline_parallel "
                              f"{parallel.pipeline_parallel}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    world = parallel.tensor_parallel * parallel.pipeline_parallel
    spawn(_import_worker, world, str(src.directory), str(out_dir), dataclasses.asdict(cfg), parallel,
          src_vocab, init_std, seed, progress)
    write_metadata(out_dir, cfg, parallel, source=str(src.directory), architecture=src.architecture)
    tok.save_pretrained(out_dir / "tokenizer")
    return cfg
