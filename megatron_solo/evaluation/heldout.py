"""Held-out shards (tools/preprocess_data.py, ``--holdout`` writes OUTPUT/heldout/) as documents to score.

Each stored sample is one document, read as the training dataset reads it: ``data.samples.expand``
gives its ids and target flags, each image is decoded from the shard and cut into normalized patches by
``data.image``. Nothing is packed: the sample is the document. Only the index is read up front (sample
lengths); a sample is decoded when its batch runs.
"""

from __future__ import annotations

import functools
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from megatron_solo.data.dataset import ShardSet
from megatron_solo.data.image import image_to_patches
from megatron_solo.data.samples import expand
from megatron_solo.data.shards import TOKEN_DTYPE, ShardError, read_members
from megatron_solo.evaluation.documents import Doc
from megatron_solo.evaluation.errors import EvaluationError

PREPROCESS_CONFIG = "preprocess_config.json"  # written by megatron_solo.data.preprocess beside the shards


def preprocess_config(folder: str | Path) -> dict:
    """The preprocessing options of a shard folder (its own, or its parent's for OUTPUT/heldout); {} if none."""
    folder = Path(folder)
    folder = folder if folder.is_dir() else folder.parent
    for candidate in (folder / PREPROCESS_CONFIG, folder.parent / PREPROCESS_CONFIG):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except json.JSONDecodeError as err:
                raise EvaluationError(f"{candidate}: not valid JSON ({err})") from err
    return {}


@dataclass
class StoredSample:
    """One sample of a shard as a document, with where it came from."""

    key: str
    kind: str
    doc: Doc
    blocks: list[tuple[int, int]]  # image blocks as [start, end) token intervals
    grids: list[tuple[int, int]]  # (rows, cols) of patches of each image


class HeldOutSet:
    """The samples of a folder of shards (or one shard), at most ``max_samples`` of them, in shard order."""

    def __init__(self, path: str | Path, patch_size: int, max_samples: int | None = None, cache: int = 8):
        """Read the shard indexes; refuse shards built for another patch size."""
        self.path = Path(path)
        if not self.path.exists():
            raise EvaluationError(f"{self.path}: no such shard folder or file")
        try:
            self.shards = ShardSet(str(self.path))
        except ShardError as err:
            raise EvaluationError(str(err)) from err
        built = preprocess_config(self.path).get("patch_size", patch_size)
        if built != patch_size:
            raise EvaluationError(f"{self.path}: shards were built for {built}-pixel patches, the model uses "
                                  f"{patch_size}")
        self.patch_size = patch_size
        self.size = len(self.shards) if max_samples is None else min(max_samples, len(self.shards))
        self.load = functools.lru_cache(maxsize=cache)(self._load)

    def __len__(self) -> int:
        return self.size

    def lengths(self) -> list[int]:
        """Tokens of each sample (from the index)."""
        return [int(n) for n in self.shards.lengths[:self.size]]

    def _read(self, i: int, decode: bool) -> StoredSample:
        s, j = self.shards.locate(i)
        ix = self.shards.indexes[s]
        key = str(ix.keys[j])
        try:
            members = read_members(ix.tar_path, int(ix.offset[j]), int(ix.end[j]), key)
            meta = json.loads(members["json"])
            text = np.frombuffer(members["tok"], dtype=TOKEN_DTYPE)
            ids, target, images = expand(meta["segments"], text, ix.vision)
            patches = [self._patches(members[name], rows, cols) for _, _, name, rows, cols in images] if decode else []
            doc = Doc(ids, target, torch.cat(patches) if patches else None)
        except (KeyError, ValueError) as err:  # ShardError is a ValueError
            raise EvaluationError(f"{ix.tar_path}: sample {key} cannot be read ({err})") from err
        return StoredSample(key, meta.get("kind", ""), doc, [(a, b) for a, b, _, _, _ in images],
                            [(rows, cols) for _, _, _, rows, cols in images])

    def _load(self, i: int) -> StoredSample:
        return self._read(i, decode=True)

    def text_only(self, i: int) -> StoredSample:
        """Sample ``i`` without decoding its images (its document has no patches)."""
        return self._read(i, decode=False)

    def _patches(self, blob: bytes, rows: int, cols: int) -> torch.Tensor:
        img = Image.open(io.BytesIO(blob))
        if img.size != (cols * self.patch_size, rows * self.patch_size):
            raise ShardError(f"stored image is {img.size[0]}x{img.size[1]}, its block expects a {cols}x{rows} "
                             f"grid of {self.patch_size}-pixel patches")
        return image_to_patches(img, self.patch_size)[0]


def truncate(sample: StoredSample, limit: int, vpatch_id: int) -> tuple[Doc, bool]:
    """The sample's document cut to at most ``limit`` tokens, never inside an image block; (doc, was it cut)."""
    doc = sample.doc
    if len(doc) <= limit:
        return doc, False
    cut = limit
    for start, end in sample.blocks:
        if start < cut < end:
            cut = start
    kept = int((doc.ids[:cut] == vpatch_id).sum())
    patches = doc.patches[:kept] if doc.patches is not None and kept else None
    return Doc(doc.ids[:cut], doc.target[:cut], patches), True

