"""The shards of one dataset as one sequence of stored samples, and the preprocessing record beside them.

A folder of shards (or a list of shard files) is read here alone, by the packed training dataset and by
evaluation's held-out sets alike: the indexes concatenated (sample lengths, image-block intervals), one
stored sample read back (its members from its byte range, its ids and target flags by ``samples.expand``,
its length checked against the index), a stored image decoded into normalized patches, and the
``preprocess_config.json`` the preprocessing wrote beside the shards (its patch size is checked here). A
folder written as parts (``parts.py``) is one dataset once every part finished, and refused before.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from megatron_solo.data.holdout import HELDOUT_DIR
from megatron_solo.data.image import patchify_into
from megatron_solo.data.parts import missing_parts
from megatron_solo.data.samples import expand
from megatron_solo.data.shards import TOKEN_DTYPE, ShardError, load_index, read_members
from megatron_solo.vocab import VisionIds

CONFIG_FILE = "preprocess_config.json"  # the preprocessing options, written beside the shards


def shard_folder(path: str | os.PathLike | list) -> Path:
    """The folder holding a dataset's shards: the path itself, or the folder of its (first) shard file."""
    first = Path(path[0]) if isinstance(path, (list, tuple)) else Path(path)
    return first if first.is_dir() else first.parent


def preprocess_config(path: str | os.PathLike | list) -> dict:
    """The preprocessing options of a dataset's shards; {} if none were recorded.

    A held-out folder (OUTPUT/heldout) without a record of its own takes the one of OUTPUT beside it.
    """
    folder = shard_folder(path)
    candidates = [folder / CONFIG_FILE] + ([folder.parent / CONFIG_FILE] if folder.name == HELDOUT_DIR else [])
    for candidate in candidates:
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except json.JSONDecodeError as err:
                raise ShardError(f"{candidate}: not valid JSON ({err})") from err
    return {}


def check_patch_size(path: str | os.PathLike | list, patch: int) -> None:
    """Refuse shards preprocessed for another patch size (their images are on another grid)."""
    built = preprocess_config(path).get("patch_size", patch)
    if built != patch:
        raise ShardError(f"{shard_folder(path)}: shards were built for {built}-pixel patches, this run uses "
                         f"{patch}-pixel patches")


class StoredImage(NamedTuple):
    """One image of a stored sample: its block [start, end) in the sample's tokens, its bytes and its grid."""

    start: int
    end: int
    blob: bytes
    rows: int
    cols: int


@dataclass
class ShardSample:
    """One stored sample as read back: ids, target-loss flags and its images, with its key and kind."""

    key: str
    kind: str
    ids: np.ndarray
    target: np.ndarray
    images: list[StoredImage]


def decode_image(image: StoredImage, patch: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """The normalized patches (rows*cols, 3*P*P) of a stored image, written into ``out`` when given."""
    img = Image.open(io.BytesIO(image.blob))
    if img.size != (image.cols * patch, image.rows * patch):
        raise ShardError(f"stored image is {img.size[0]}x{img.size[1]}, its block expects a {image.cols}x"
                         f"{image.rows} grid of {patch}-pixel patches")
    pixels = np.asarray(img.convert("RGB") if img.mode != "RGB" else img)
    if out is None:
        out = torch.empty(image.rows * image.cols, 3 * patch * patch)
    patchify_into(pixels, out, patch)
    return out


def _shard_paths(path: str | list[str]) -> list[Path]:
    if isinstance(path, (list, tuple)):
        return [Path(p) for p in path]
    p = Path(path)
    if p.is_dir():
        written = p.parent if p.name == HELDOUT_DIR else p  # the folder the parts' markers are in
        count, missing = missing_parts(written)
        if missing:
            raise ShardError(f"{p}: written as {count} parts and part(s) {', '.join(map(str, missing))} have not "
                             "finished; rerun them before training on it")
        found = sorted(p.glob("*.tar"))
        if not found:
            raise ShardError(f"{p}: no .tar shards in this folder")
        return found
    return [p]


class ShardSet:
    """All shards of one dataset: sample lengths and image-block intervals, concatenated over shards."""

    def __init__(self, path: str | list[str]):
        """Load every shard index (checked against its tar's size)."""
        self.paths = _shard_paths(path)
        indexes = [load_index(p) for p in self.paths]
        visions = {ix.vision for ix in indexes if len(ix)}
        if len(visions) > 1:
            raise ShardError(f"{path}: shards were built with different image-block ids {sorted(visions)}")
        self.vision = visions.pop() if visions else VisionIds()
        self.indexes = indexes
        sizes = np.array([len(ix) for ix in indexes], np.int64)
        self.shard_start = np.concatenate([[0], np.cumsum(sizes)])
        self.lengths = np.concatenate([ix.length for ix in indexes]) if indexes else np.zeros(0, np.int64)
        counts = np.concatenate([np.diff(ix.block_ptr) for ix in indexes]) if indexes else np.zeros(0, np.int64)
        self.block_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.block_start = np.concatenate([ix.block_start for ix in indexes]).astype(np.int64)
        self.block_end = np.concatenate([ix.block_end for ix in indexes]).astype(np.int64)
        if len(self) == 0:
            raise ShardError(f"{path}: the shards hold no samples")
        self._files: dict[tuple[int, str], object] = {}

    def __len__(self) -> int:
        return int(self.shard_start[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """(shard number, index inside the shard) of sample i."""
        s = int(np.searchsorted(self.shard_start, i, side="right") - 1)
        return s, i - int(self.shard_start[s])

    def fingerprint(self) -> list:
        """Identity of the shard set for resume checks (names, sizes, sample counts)."""
        return [[p.name, ix.tar_size, len(ix)] for p, ix in zip(self.paths, self.indexes)]

    def _handle(self, path: Path):
        key = (os.getpid(), str(path))  # never share a file offset across forked workers
        f = self._files.get(key)
        if f is None:
            f = self._files[key] = open(path, "rb")  # cached for the process's lifetime
        return f

    def read(self, i: int) -> ShardSample:
        """Sample i as stored: its ids, target flags and images (still compressed); ShardError if malformed."""
        s, j = self.locate(i)
        ix = self.indexes[s]
        key = str(ix.keys[j])
        members = read_members(ix.tar_path, int(ix.offset[j]), int(ix.end[j]), key, self._handle(ix.tar_path))
        try:
            meta = json.loads(members["json"])
            text = np.frombuffer(members["tok"], dtype=TOKEN_DTYPE)
            ids, target, images = expand(meta["segments"], text, self.vision)
            stored = [StoredImage(a, b, members[name], rows, cols) for a, b, name, rows, cols in images]
        except (KeyError, ValueError) as err:
            raise ShardError(f"{ix.tar_path}: sample {key} is malformed ({err})") from err
        if len(ids) != int(ix.length[j]):
            raise ShardError(f"{ix.tar_path}: sample {key} has {len(ids)} tokens, index says {int(ix.length[j])}")
        return ShardSample(key, meta.get("kind", ""), ids, target, stored)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_files"] = {}  # file handles are per process
        return state
