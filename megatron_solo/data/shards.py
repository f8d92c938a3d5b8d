"""Webdataset tar shards of SOLO samples and the index beside each shard.

A sample with key K is stored as tar members (plain ustar/GNU tar, readable by `webdataset`):
    K.json    {"kind": ..., "segments": [{"text": n, "loss": 0|1} | {"image": "0.jpg", "rows": r, "cols": c}]}
    K.tok     its text token ids, all text segments concatenated, uint16 little-endian (ids < 65536)
    K.0.jpg   its images, already resized by SOLO's rule (format chosen at preprocessing)
The index `<shard>.idx.npz` holds per sample: key, byte range [offset, end) in the tar (headers
included), text tokens, image tokens, total length, image-block intervals (CSR: block_ptr, block_start,
block_end), plus the shard's byte size, the vision ids used to build image blocks and its stats (JSON).
Packing needs only the index; only the loader opens the tars.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_solo.data.samples import ImageSegment, Sample, layout, segments_meta
from megatron_solo.errors import UserInputError
from megatron_solo.vocab import VisionIds

INDEX_SUFFIX = ".idx.npz"
TOKEN_DTYPE = np.dtype("<u2")


class ShardError(UserInputError):
    """A shard that cannot be used (missing, truncated, or out of step with its index); names the file."""


def index_path(tar_path: str | os.PathLike) -> Path:
    """The index file that belongs to a shard."""
    tar_path = Path(tar_path)
    return tar_path.with_name(tar_path.name[: -len(".tar")] + INDEX_SUFFIX if tar_path.name.endswith(".tar")
                              else tar_path.name + INDEX_SUFFIX)


PARTIAL_SUFFIX = ".tmp"  # a shard being written; its index is written as INDEX + PARTIAL_SUFFIX + ".npz"


def partial_files(folder: str | os.PathLike, prefix: str) -> list[Path]:
    """Files a ShardWriter of shards ``prefix-N.tar`` left unfinished in ``folder`` (an interrupted run's)."""
    own = re.compile(rf"{re.escape(prefix)}-\d+(\.tar{re.escape(PARTIAL_SUFFIX)}|{re.escape(INDEX_SUFFIX)}"
                     rf"{re.escape(PARTIAL_SUFFIX)}\.npz)")
    return sorted(p for p in Path(folder).iterdir() if own.fullmatch(p.name) and p.is_file())


class ShardWriter:
    """Writes samples to `<path>.tmp` and its index; `close()` renames both into place (tar first)."""

    def __init__(self, path: str | os.PathLike, vision: VisionIds, image_format: str = "jpeg",
                 image_quality: int = 95):
        """Open a shard for writing; nothing appears under the final name until `close()`."""
        # local: keeps this module importable without torch for tools
        from megatron_solo.data.image import encode_image

        self._encode = encode_image
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self.vision = vision
        self.image_format, self.image_quality = image_format, image_quality
        self._file = open(self.tmp, "wb")  # closed in close() or abort()
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.GNU_FORMAT)
        self.rows: dict[str, list] = {k: [] for k in ("offset", "end", "text_tokens", "image_tokens", "length")}
        self.keys: list[str] = []
        self.block_ptr, self.block_start, self.block_end = [0], [], []
        self.image_bytes = 0

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, sample: Sample) -> None:
        """Append one sample (its images are compressed here)."""
        if "." in sample.key or "/" in sample.key or len(sample.key) > 80:
            raise ValueError(f"sample key {sample.key!r} must be short and free of '.' and '/'")
        names, blobs = [], []
        for seg in sample.segments:
            if isinstance(seg, ImageSegment):
                blob, ext = self._encode(seg.image, self.image_format, self.image_quality)
                names.append(f"{len(names)}.{ext}")
                blobs.append(blob)
        meta = segments_meta(sample, names)
        text_ids = [i for seg in sample.segments if not isinstance(seg, ImageSegment) for i in seg.ids]
        if text_ids and max(text_ids) >= 1 << 16:
            raise ValueError("token ids must fit in uint16")
        start = self._tar.offset
        self._add(f"{sample.key}.json", json.dumps({"kind": sample.kind, "segments": meta}).encode())
        self._add(f"{sample.key}.tok", np.asarray(text_ids, dtype=TOKEN_DTYPE).tobytes())
        for name, blob in zip(names, blobs):
            self._add(f"{sample.key}.{name}", blob)
            self.image_bytes += len(blob)
        text, image, blocks = layout(meta)
        for k, v in (("offset", start), ("end", self._tar.offset), ("text_tokens", text),
                     ("image_tokens", image), ("length", text + image)):
            self.rows[k].append(v)
        self.keys.append(sample.key)
        self.block_start += [b[0] for b in blocks]
        self.block_end += [b[1] for b in blocks]
        self.block_ptr.append(len(self.block_start))

    def __len__(self) -> int:
        return len(self.keys)

    def close(self, stats: dict | None = None) -> Path:
        """Finish the tar, write the index, then rename tar and index into place (index last = done)."""
        self._tar.close()
        self._file.close()
        size = self.tmp.stat().st_size
        arrays = {k: np.asarray(v, dtype=np.int64) for k, v in self.rows.items()}
        arrays.update(
            keys=np.asarray(self.keys, dtype=str) if self.keys else np.zeros(0, dtype="<U1"),
            block_ptr=np.asarray(self.block_ptr, np.int64),
            block_start=np.asarray(self.block_start, np.int64),
            block_end=np.asarray(self.block_end, np.int64),
            tar_size=np.int64(size),
            vision_ids=np.asarray(self.vision, np.int64),
            stats=np.asarray(json.dumps(stats or {})),
        )
        idx_final = index_path(self.path)
        idx_tmp = idx_final.with_name(idx_final.name + PARTIAL_SUFFIX + ".npz")
        np.savez(idx_tmp, **arrays)
        os.replace(self.tmp, self.path)
        os.replace(idx_tmp, idx_final)
        return self.path

    def abort(self) -> None:
        """Drop the partial shard."""
        try:
            self._tar.close()
            self._file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


@dataclass
class ShardIndex:
    """The index of one shard (arrays as in the module docstring)."""

    tar_path: Path
    keys: np.ndarray
    offset: np.ndarray
    end: np.ndarray
    text_tokens: np.ndarray
    image_tokens: np.ndarray
    length: np.ndarray
    block_ptr: np.ndarray
    block_start: np.ndarray
    block_end: np.ndarray
    tar_size: int
    vision: VisionIds
    stats: dict

    def __len__(self) -> int:
        return len(self.keys)


def load_index(tar_path: str | os.PathLike, check: bool = True) -> ShardIndex:
    """Read a shard's index; with `check`, refuse one whose tar is missing or of another size."""
    tar_path = Path(tar_path)
    idx = index_path(tar_path)
    if not idx.exists():
        raise ShardError(f"{tar_path}: no index {idx.name} beside it (run tools/preprocess_data.py)")
    try:
        with np.load(idx, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as err:
        raise ShardError(f"{idx}: unreadable index ({err})") from err
    out = ShardIndex(
        tar_path=tar_path, keys=data["keys"], offset=data["offset"], end=data["end"],
        text_tokens=data["text_tokens"], image_tokens=data["image_tokens"], length=data["length"],
        block_ptr=data["block_ptr"], block_start=data["block_start"], block_end=data["block_end"],
        tar_size=int(data["tar_size"]), vision=VisionIds(*data["vision_ids"].tolist()),
        stats=json.loads(str(data["stats"])),
    )
    if check:
        if not tar_path.exists():
            raise ShardError(f"{tar_path}: shard missing (its index exists)")
        size = tar_path.stat().st_size
        if size != out.tar_size:
            raise ShardError(f"{tar_path}: is {size} bytes but its index describes {out.tar_size} bytes; "
                             "the shard and its index do not match (truncated or rewritten shard?)")
        if len(out) and int(out.end[-1]) > size:
            raise ShardError(f"{tar_path}: index points past the end of the shard")
    return out


def verify_shard(tar_path: str | os.PathLike) -> ShardIndex:
    """Full check: re-index the tar in C++ and compare every member with the index."""
    from megatron_solo import _csrc

    index = load_index(tar_path)
    try:
        members = _csrc.index_tar(str(tar_path))
    except ValueError as err:
        raise ShardError(str(err)) from err
    by_key: dict[str, list] = {}
    for name, header_at, _, _ in members:
        by_key.setdefault(name.split(".", 1)[0], []).append(header_at)
    if list(by_key) != index.keys.tolist():
        raise ShardError(f"{tar_path}: sample keys in the tar differ from its index")
    for i, key in enumerate(index.keys.tolist()):
        if by_key[key][0] != int(index.offset[i]):
            raise ShardError(f"{tar_path}: sample {key} starts at byte {by_key[key][0]}, index says "
                             f"{int(index.offset[i])}")
    return index


def read_members(tar_path: str | os.PathLike, offset: int, end: int, key: str, handle=None) -> dict[str, bytes]:
    """The members of one sample (extension -> bytes) from its byte range; checks they belong to `key`."""
    if handle is None:
        with open(tar_path, "rb") as f:
            return read_members(tar_path, offset, end, key, f)
    handle.seek(offset)
    raw = handle.read(end - offset)
    if len(raw) != end - offset:
        raise ShardError(f"{tar_path}: truncated at byte {offset + len(raw)} (sample {key})")
    out, pos = {}, 0
    while pos + 512 <= len(raw):
        try:
            info = tarfile.TarInfo.frombuf(raw[pos:pos + 512], "utf-8", "surrogateescape")
        except tarfile.HeaderError as err:
            raise ShardError(f"{tar_path}: bad tar header at byte {offset + pos} (sample {key}): {err}; "
                             "the shard does not match its index") from err
        data_at = pos + 512
        name = info.name
        if not name.startswith(key + "."):
            raise ShardError(f"{tar_path}: member {name!r} at byte {offset + pos} is not part of sample "
                             f"{key}; the shard does not match its index")
        out[name[len(key) + 1:]] = raw[data_at:data_at + info.size]
        pos = data_at + (info.size + 511) // 512 * 512
    return out
