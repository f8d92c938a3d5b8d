"""Import a HF model (any registered adapter) into a megatron-core dist_checkpointing checkpoint.

One process per model-parallel rank (TP x PP) builds its SoloModel chunks at the target layout and
fills each parameter with its slice of the HF tensor, read lazily (one tensor at a time) from the
safetensors shards; then the chunks are saved with the checkpoint package. Output layout::

    OUT/iter_0000000/           the checkpoint (torch_dist, loadable at any TP/PP, by either layer spec)
    OUT/latest_checkpointed_iteration.txt
    OUT/solo_model.json         SoloModelConfig + the layout it was saved at
    OUT/tokenizer/              the tokenizer with the SOLO tokens
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import torch

from megatron_solo.checkpoint.metadata import TOKENIZER_DIR, write_metadata
from megatron_solo.checkpoint.names import canonical_name
from megatron_solo.checkpoint.state import TrainState, save_checkpoint
from megatron_solo.checkpoint.weights import Prebuilt, own_storage_sharded_state_dict
from megatron_solo.config.model import SoloModelConfig
from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.hf.adapters import FreshWeights, adapter_for, open_hf
from megatron_solo.hf.source import ConversionError
from megatron_solo.hf.workers import run_workers
from megatron_solo.model.builder import solo_provider
from megatron_solo.model.chunks import build_model_chunks
from megatron_solo.platform import init_parallel


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


def fill_chunks(chunks: list[torch.nn.Module], full: Callable[[str], torch.Tensor], progress: bool) -> None:
    """Copy every parameter of this rank's chunks from ``full(canonical name)``, the unsharded tensor."""
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
                part = tp_slice(full(canonical_name(gname)), p, gname, rank, size)
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


def import_weights(src_dir: str, out_dir: str, cfg_dict: dict, parallel: ParallelConfig, std: float, seed: int,
                   progress: bool) -> None:
    """Rank worker: build this rank's chunks of ``cfg_dict``'s model, fill them from ``src_dir``, save into OUT."""
    quiet_workers()
    init_parallel(parallel, seed=seed)
    cfg = SoloModelConfig(**cfg_dict)
    src = open_hf(src_dir)
    adapter = adapter_for(src)
    chunks = build_model_chunks(solo_provider(cfg, parallel), parallel)
    fresh = FreshWeights(cfg, cfg.padded_vocab_size(parallel.tensor_parallel), std, seed)
    fill_chunks(chunks, lambda name: adapter.from_hf(src, name, cfg, fresh), progress)
    src.close()
    prebuilt = [Prebuilt(own_storage_sharded_state_dict(c)) for c in chunks]
    del chunks
    save_checkpoint(out_dir, TrainState(iteration=0), prebuilt)


@dataclasses.dataclass
class ImportPlan:
    """What an import writes besides the weights, decided before any worker starts."""

    cfg: SoloModelConfig
    source: Path  # the HF folder
    architecture: str | None
    tokenizer: object  # SoloTokenizer / HFSoloTokenizer with the SOLO tokens

    def write_files(self, out_dir: Path, parallel: ParallelConfig) -> None:
        """OUT/solo_model.json and OUT/tokenizer/ (OUT made if missing)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        write_metadata(out_dir, self.cfg, parallel, source=str(self.source), architecture=self.architecture)
        self.tokenizer.save_pretrained(out_dir / TOKENIZER_DIR)


def plan_import(src_dir: str | os.PathLike, parallel: ParallelConfig, *, tokenizer: str | None = None,
                chat_tokens: bool = True, close_with_vision: bool = False) -> ImportPlan:
    """The model an import of ``src_dir`` at ``parallel`` builds; ConversionError naming what does not fit."""
    src = open_hf(src_dir)
    adapter = adapter_for(src)
    tok = adapter.tokenizer(src, tokenizer, chat_tokens, close_with_vision)
    cfg, src_vocab = adapter.config_from_hf(src, len(tok.added_tokens))
    cfg = adapter.fit_tokenizer(src, cfg, src_vocab, tok)
    src.close()
    check_layout(cfg, parallel, src.config_file)
    if cfg.num_layers % parallel.pipeline_parallel:
        raise ConversionError(f"num_hidden_layers {cfg.num_layers} not divisible by pipeline_parallel "
                              f"{parallel.pipeline_parallel}")
    return ImportPlan(cfg, src.directory, src.architecture, tok)


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
    parallel = parallel or ParallelConfig()
    plan = plan_import(src_dir, parallel, tokenizer=tokenizer, chat_tokens=chat_tokens,
                       close_with_vision=close_with_vision)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    world = parallel.tensor_parallel * parallel.pipeline_parallel
    run_workers(import_weights, world, str(plan.source), str(out_dir), dataclasses.asdict(plan.cfg), parallel,
                init_std, seed, progress)
    plan.write_files(out_dir, parallel)
    return plan.cfg
