"""What a save root holds besides the weights: ``solo_model.json`` and the tokenizer.

``solo_model.json`` = the SoloModelConfig, the TP/PP layout of the newest checkpoint (for a reader's
information: each checkpoint's own layout is in its train state, :mod:`~megatron_solo.checkpoint.train_state`,
and is the one used, so every checkpoint of a folder reads after any number of layout changes), and where
the weights came from. ``tokenizer/`` = the tokenizer the model was trained with, so export
and evaluation need nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from megatron_solo.checkpoint.layout import CheckpointError
from megatron_solo.checkpoint.names import EMBEDDING
from megatron_solo.checkpoint.train_state import SavedLayout, read_train_state
from megatron_solo.config.model import SoloModelConfig
from megatron_solo.config.parallel import ParallelConfig

META_FILE = "solo_model.json"
TOKENIZER_DIR = "tokenizer"


def write_metadata(out_dir: str | os.PathLike, cfg: SoloModelConfig, parallel: ParallelConfig, **extra) -> None:
    """Write OUT/solo_model.json: the model config and the layout the checkpoint was saved at."""
    meta = {"model": dataclasses.asdict(cfg), "tensor_parallel": parallel.tensor_parallel,
            "pipeline_parallel": parallel.pipeline_parallel, **extra}
    _write_json(Path(out_dir, META_FILE), meta)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def record_saved_layout(root: str | os.PathLike, layout: SavedLayout) -> None:
    """Point solo_model.json (when the root has one) at the layout of the checkpoint just saved."""
    path = Path(root, META_FILE)
    if not path.is_file():
        return
    meta = json.loads(path.read_text())
    if (meta.get("tensor_parallel"), meta.get("pipeline_parallel")) != (layout.tensor_parallel,
                                                                       layout.pipeline_parallel):
        meta.update(tensor_parallel=layout.tensor_parallel, pipeline_parallel=layout.pipeline_parallel)
        _write_json(path, meta)


def read_metadata(root: str | os.PathLike, meta_file: str | os.PathLike | None = None) -> tuple[dict, Path]:
    """(solo_model.json of a save root, its path); CheckpointError when it is missing or unreadable."""
    meta_path = Path(meta_file) if meta_file else Path(root) / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: missing; pass the model config (solo_model.json) of this checkpoint")
    try:
        meta = json.loads(meta_path.read_text())
        SoloModelConfig(**meta["model"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{meta_path}: not a megatron_solo model description ({err!r})") from err
    return meta, meta_path


def model_config(meta: dict) -> SoloModelConfig:
    """The SoloModelConfig stored in a solo_model.json."""
    return SoloModelConfig(**meta["model"])


def check_checkpoint(ckpt: Path, meta: dict, meta_path: Path | str) -> int:
    """Validate the checkpoint against its metadata (from ``meta_path``); returns the stored (padded) vocabulary rows.

    The layout is the checkpoint's own (its train state), whatever the save root's solo_model.json says.
    """
    from megatron.core import dist_checkpointing

    cfg = model_config(meta)
    read_train_state(ckpt)  # a checkpoint megatron_solo wrote, its train state readable
    tensors = dist_checkpointing.load_tensors_metadata(str(ckpt))
    embed = next((v for k, v in tensors.items() if k.endswith(EMBEDDING)), None)
    if embed is None:
        raise CheckpointError(f"{ckpt}: no {EMBEDDING} in the checkpoint")
    rows, width = embed.global_shape
    if width != cfg.hidden_size or rows < cfg.vocab_size:
        raise CheckpointError(
            f"{meta_path}: field model.hidden_size/vocab_size = {cfg.hidden_size}/{cfg.vocab_size} but {ckpt} "
            f"stores {EMBEDDING} as {rows}x{width}"
        )
    qkv = next((v for k, v in tensors.items() if k.endswith("linear_qkv.weight")), None)
    if qkv is not None and qkv.global_shape[0] != cfg.num_layers:
        raise CheckpointError(f"{meta_path}: field model.num_layers = {cfg.num_layers} but {ckpt} stores "
                              f"{qkv.global_shape[0]} layers")
    return rows


def write_run_files(save_dir: str | os.PathLike, cfg: SoloModelConfig, parallel: ParallelConfig, tok,
                    init_from: str | None) -> None:
    """solo_model.json and tokenizer/ beside a run's checkpoints (kept when they exist: a resumed run)."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    if not (save_dir / META_FILE).is_file():
        write_metadata(save_dir, cfg, parallel, source="megatron_solo training")
    target = save_dir / TOKENIZER_DIR
    if not target.is_dir():
        previous = Path(init_from) / TOKENIZER_DIR if init_from else None
        if previous is not None and previous.is_dir():
            shutil.copytree(previous, target)  # keep the imported base model's tokenizer
        else:
            tok.save_pretrained(target)
