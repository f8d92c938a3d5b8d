"""The train state of a checkpoint: one typed, versioned dataclass and its one JSON reader and writer.

``iter_N/solo_train_state.json`` holds everything besides tensors that a resumed run needs: the
iteration, the data position, the layout the checkpoint was saved at, the schedule, and what the
run's guards recorded (skipped steps, data skipped by a rewind, the spike detector's recent losses).
Version 1 (megatron_solo 0.1-0.2: the data position untyped in ``extra["data"]``, the layout
sometimes a (pp, tp, dp) list) is read and converted; a newer version than this code knows is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_solo.checkpoint.layout import TRAIN_STATE_FILE, CheckpointError

TRAIN_STATE_VERSION = 2


@dataclass
class DataPosition:
    """Where the training loader stands: packs consumed over all ranks, and the blend they came from."""

    consumed_packs: int = 0
    fingerprint: str | None = None  # PackedDataset.fingerprint() of the blend
    micro_batch_size: int = 1
    world_size: int = 1  # data-parallel ranks that read it


@dataclass
class SavedLayout:
    """The parallel sizes a checkpoint was written at."""

    pipeline_parallel: int = 1
    tensor_parallel: int = 1
    data_parallel: int = 1


@dataclass
class TrainState:
    """Everything besides weights, optimizer and RNG that a resumed run needs."""

    iteration: int = 0
    consumed_samples: int = 0
    data: DataPosition | None = None
    skipped_steps: int = 0  # steps whose update was not applied (non-finite, or a spike under skip)
    spikes: int = 0  # loss spikes the spike detector found (whatever the policy did about them)
    rewinds: int = 0  # times the run went back to a checkpoint after a spike
    # [first, end) global pack ranges a rewind skipped, in the order they were skipped
    skipped_data: list[list[int]] = field(default_factory=list)
    # the spike detector's recent step losses (after the warm-up; a spike left without its update not among them)
    spike_history: list[float] = field(default_factory=list)
    layout: SavedLayout | None = None  # filled in by the save
    scheduler: dict | None = None  # the learning-rate schedule's state, filled in by the save
    version: int = TRAIN_STATE_VERSION

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this state (plain types only)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Any, where: str) -> TrainState:
        """The state in a JSON object of any known version; CheckpointError naming ``where`` and the field."""
        if not isinstance(raw, dict) or "iteration" not in raw:
            raise CheckpointError(f"{where}: no field 'iteration' (not written by megatron_solo?)")
        version = raw.get("version", 1)
        if not isinstance(version, int) or version > TRAIN_STATE_VERSION:
            raise CheckpointError(f"{where}: field version = {version!r}; this megatron_solo reads train state "
                                  f"versions 1 to {TRAIN_STATE_VERSION} (a newer megatron_solo wrote it?)")
        if version == 1:
            raw = _from_version_1(raw)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise CheckpointError(f"{where}: unknown field(s) {unknown} in a version {version} train state")
        try:
            data = DataPosition(**raw["data"]) if raw.get("data") is not None else None
            layout = SavedLayout(**raw["layout"]) if raw.get("layout") is not None else None
            return cls(**{**raw, "data": data, "layout": layout, "version": TRAIN_STATE_VERSION})
        except TypeError as err:
            raise CheckpointError(f"{where}: a field of the train state does not fit ({err})") from err


def _from_version_1(raw: dict) -> dict:
    """A version 1 train state in version 2's fields."""
    layout = raw.get("layout")
    if isinstance(layout, (list, tuple)):  # 0.1.0 stored the tuple (pp, tp, dp)
        layout = {"pipeline_parallel": layout[0], "tensor_parallel": layout[1], "data_parallel": layout[2]}
    data = dict(raw.get("extra", {}).get("data") or {}) or None
    return {"iteration": int(raw["iteration"]), "consumed_samples": int(raw.get("consumed_samples", 0)),
            "data": data, "layout": layout, "scheduler": raw.get("scheduler")}


def read_train_state(ckpt: str | os.PathLike) -> TrainState:
    """The train state of one checkpoint directory (JSON, no pickle); CheckpointError when it cannot be read.

    Checkpoints written before the JSON file kept it in dist_checkpointing's common.pt: read with
    torch's weights-only unpickler, which builds plain containers and tensors only.
    """
    path = Path(ckpt, TRAIN_STATE_FILE)
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: not valid JSON ({err})") from err
        return TrainState.from_json(raw, str(path))
    common = Path(ckpt, "common.pt")
    if not common.is_file():
        raise CheckpointError(f"{ckpt}: no {TRAIN_STATE_FILE} (not a checkpoint written by megatron_solo?)")
    import torch

    try:
        raw = torch.load(common, map_location="cpu", weights_only=True).get("train_state")
    except Exception as err:
        raise CheckpointError(f"{common}: cannot read the checkpoint's common state ({err})") from err
    if raw is None:
        raise CheckpointError(f"{ckpt}: checkpoint has no train_state (not written by megatron_solo?)")
    return TrainState.from_json(raw, str(common))


def write_train_state(ckpt: str | os.PathLike, state: TrainState) -> None:
    """Write ``state`` as the train state of the checkpoint in ``ckpt`` (atomically: a tmp file renamed)."""
    path = Path(ckpt, TRAIN_STATE_FILE)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2))
    os.replace(tmp, path)
