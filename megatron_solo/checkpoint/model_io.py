"""A SoloModel built from a checkpoint's own metadata and loaded at a given layout."""

from __future__ import annotations

import dataclasses
import os

import torch

from megatron_solo.checkpoint.layout import CheckpointError, resolve_checkpoint
from megatron_solo.checkpoint.metadata import check_checkpoint, model_config, read_metadata
from megatron_solo.checkpoint.state import load_checkpoint
from megatron_solo.checkpoint.weights import load_in_place
from megatron_solo.config.model import SoloModelConfig
from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.model.builder import solo_provider
from megatron_solo.model.chunks import build_model_chunks


def load_solo_model(checkpoint: str | os.PathLike, parallel: ParallelConfig | None = None,
                    model_meta: str | os.PathLike | None = None, *,
                    in_place: bool = False) -> tuple[list[torch.nn.Module], SoloModelConfig]:
    """Inside an initialized world: this rank's SoloModel chunks loaded from ``checkpoint`` at ``parallel``.

    The stored (padded) vocabulary is kept, whatever TP it was padded for; the returned config has the
    true vocabulary size (slice logits to ``cfg.vocab_size``). ``in_place`` (TP1): weights only, read
    straight into the parameters (what export uses to bound memory).

    The model is built for this reader, on the local spec in fp32 with the default kernels: the run
    choices recorded in solo_model.json (TE, FP8 and its recipe, the attention backend) say how it was
    trained and are returned as recorded, never required (an FP8 run's checkpoint loads on a CPU).
    """
    parallel = parallel or ParallelConfig()
    root, ckpt = resolve_checkpoint(checkpoint)
    meta, meta_path = read_metadata(root, model_meta)
    rows = check_checkpoint(ckpt, meta, meta_path)
    cfg = model_config(meta)
    load_cfg = dataclasses.replace(cfg.with_run_defaults(), vocab_size=rows, transformer_impl="local")
    if load_cfg.padded_vocab_size(parallel.tensor_parallel) != rows:
        raise CheckpointError(f"{ckpt}: {rows} vocabulary rows cannot be split over TP{parallel.tensor_parallel}")
    chunks = build_model_chunks(solo_provider(load_cfg, parallel), parallel)
    if in_place and parallel.tensor_parallel == 1:
        for chunk in chunks:
            load_in_place(str(ckpt), chunk)
    else:
        load_checkpoint(str(ckpt), chunks, load_rng=False)
    return chunks, cfg
