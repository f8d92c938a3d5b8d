"""Held-out shards (tools/preprocess_data.py, ``--holdout`` writes OUTPUT/heldout/) as documents to score.

Each stored sample is one document, read by the reader the training dataset uses
(``data.shard_set.ShardSet.read``: its ids and target flags), each image decoded from the shard into
normalized patches (``data.shard_set.decode_image``). Nothing is packed: the sample is the document. Only
the index is read up front (sample lengths); a sample is decoded when its batch runs."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_solo.data.shard_set import ShardSet, check_patch_size, decode_image
from megatron_solo.data.shards import ShardError
from megatron_solo.evaluation.documents import Doc
from megatron_solo.evaluation.errors import EvaluationError


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
            check_patch_size(self.path, patch_size)
        except ShardError as err:
            raise EvaluationError(str(err)) from err
        self.patch_size = patch_size
        self.size = len(self.shards) if max_samples is None else min(max_samples, len(self.shards))
        self.load = functools.lru_cache(maxsize=cache)(self._load)

    def __len__(self) -> int:
        return self.size

    def lengths(self) -> list[int]:
        """Tokens of each sample (from the index)."""
        return [int(n) for n in self.shards.lengths[:self.size]]

    def _read(self, i: int, decode: bool) -> StoredSample:
        try:
            stored = self.shards.read(i)
            patches = [decode_image(image, self.patch_size) for image in stored.images] if decode else []
        except ShardError as err:
            raise EvaluationError(str(err)) from err
        doc = Doc(stored.ids, stored.target, torch.cat(patches) if patches else None)
        return StoredSample(stored.key, stored.kind, doc, [(im.start, im.end) for im in stored.images],
                            [(im.rows, im.cols) for im in stored.images])

    def _load(self, i: int) -> StoredSample:
        return self._read(i, decode=True)

    def text_only(self, i: int) -> StoredSample:
        """Sample ``i`` without decoding its images (its document has no patches)."""
        return self._read(i, decode=False)


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

