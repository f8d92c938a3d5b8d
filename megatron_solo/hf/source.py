"""Read a Hugging Face model directory lazily: config.json and safetensors (single or sharded).

Which architecture it holds is decided by the adapters (:mod:`megatron_solo.hf.adapters`).
Every error names the file or the config field at fault.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megatron_solo.errors import UserInputError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class ConversionError(UserInputError):
    """An input that cannot be converted; the message names the file or field at fault."""


@dataclass
class HFSource:
    """A HF checkpoint directory: parsed config.json and a lazy tensor reader over its safetensors."""

    directory: Path
    config: dict
    architecture: str | None  # config.json's first "architectures" entry
    weight_map: dict[str, str]  # tensor name -> file name (relative to directory)
    _handles: dict[str, object] = field(default_factory=dict, repr=False)

    @property
    def config_file(self) -> Path:
        """Path of config.json."""
        return self.directory / "config.json"

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


def read_hf_dir(directory: str | os.PathLike) -> HFSource:
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
    return HFSource(directory, config, arch, weight_map)


