"""What a save root holds besides the weights: ``solo_model.json`` and the tokenizer; and each
checkpoint's train state (``iter_N/solo_train_state.json``).

``solo_model.json`` = the SoloModelConfig, the TP/PP layout of the newest checkpoint (rewritten
at every save, so a run resumed at another layout still describes what is on disk), and where
the weights came from. ``tokenizer/`` = the tokenizer the model was trained with, so export
and evaluation need nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from megatron_solo.checkpoint.layout import TRAIN_STATE_FILE, CheckpointError
from megatron_solo.checkpoint.names import EMBEDDING
from megatron_solo.config.model import SoloModelConfig
from megatron_solo.config.parallel import ParallelConfig

META_FILE = "solo_model.json"
TOKENIZER_DIR = "tokenizer"


def layout_dict(layout: tuple[int, ...]) -> dict[str, int]:
    """{pipeline_parallel, tensor_parallel, data_parallel} from a (pp, tp, dp, ...) tuple."""
    return {"pipeline_parallel": layout[0], "tensor_parallel": layout[1], "data_parallel": layout[2]}


def saved_layout(train_state: dict) -> dict[str, int]:
    """The TP/PP/DP sizes a checkpoint was saved at, from its train state."""
    layout = train_state["layout"]
    # checkpoints of 0.1.0 stored the tuple (pp, tp, dp)
    return dict(layout) if isinstance(layout, dict) else layout_dict(tuple(layout))


def read_train_state(ckpt: str | os.PathLike) -> dict:
    """The train state of one checkpoint directory (JSON, no pickle); CheckpointError when it cannot be read.

    Checkpoints written before the JSON file kept it in dist_checkpointing's common.pt: read with
    torch's weights-only unpickler, which builds plain containers and tensors only.
    """
    path = Path(ckpt, TRAIN_STATE_FILE)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(saved, dict) or "iteration" not in saved:
            raise CheckpointError(f"{path}: no field 'iteration' (not written by megatron_solo?)")
        return saved
    common = Path(ckpt, "common.pt")
    if not common.is_file():
        raise CheckpointError(f"{ckpt}: no {TRAIN_STATE_FILE} (not a checkpoint written by megatron_solo?)")
    import torch

    try:
        saved = torch.load(common, map_location="cpu", weights_only=True).get("train_state")
    except Exception as err:
        raise CheckpointError(f"{common}: cannot read the checkpoint's common state ({err})") from err
    if saved is None:
        raise CheckpointError(f"{ckpt}: checkpoint has no train_state (not written by megatron_solo?)")
    return saved


def write_train_state(ckpt: str | os.PathLike, state: dict) -> None:
    """Write the train state of the checkpoint being saved in ``ckpt`` (JSON: read back without pickle)."""
    _write_json(Path(ckpt, TRAIN_STATE_FILE), state)


def write_metadata(out_dir: str | os.PathLike, cfg: SoloModelConfig, parallel: ParallelConfig, **extra) -> None:
    """Write OUT/solo_model.json: the model config and the layout the checkpoint was saved at."""
    meta = {"model": dataclasses.asdict(cfg), "tensor_parallel": parallel.tensor_parallel,
            "pipeline_parallel": parallel.pipeline_parallel, **extra}
    _write_json(Path(out_dir, META_FILE), meta)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def record_saved_layout(root: str | os.PathLike, layout: dict[str, int]) -> None:
    """Point solo_model.json (when the root has one) at the layout of the checkpoint just saved."""
    path = Path(root, META_FILE)
    if not path.is_file():
        return
    meta = json.loads(path.read_text())
    if (meta.get("tensor_parallel"), meta.get("pipeline_parallel")) != (layout["tensor_parallel"],
                                                                       layout["pipeline_parallel"]):
        meta.update(tensor_parallel=layout["tensor_parallel"], pipeline_parallel=layout["pipeline_parallel"])
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
    """Validate the checkpoint against its metadata (from ``meta_path``); returns the stored (padded) vocabulary rows."""
    from megatron.core import dist_checkpointing

    cfg = model_config(meta)
    layout = saved_layout(read_train_state(ckpt))
    if "tensor_parallel" in meta:
        tp, pp = layout["tensor_parallel"], layout["pipeline_parallel"]
        if (tp, pp) != (meta["tensor_parallel"], meta.get("pipeline_parallel", 1)):
            raise CheckpointError(
                f"{meta_path}: fields tensor_parallel/pipeline_parallel = {meta['tensor_parallel']}/"
                f"{meta.get('pipeline_parallel', 1)} but {ckpt} was saved at TP{tp} PP{pp}"
            )
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
