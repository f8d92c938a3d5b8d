"""Packing variable-length samples into fixed-length sequences, and blending datasets by weight.

The algorithm (identical in `csrc/packing.cpp` and in the pure-Python reference `pack_reference`):

1. Order: the sample ids are shuffled by a Fisher-Yates pass driven by splitmix64 seeded from
   (seed, epoch) -- a generator simple enough to reproduce bit for bit in C++ and Python.
2. Overflow: a sample longer than L is cut into pieces of at most L tokens, each cut placed as late as
   possible but never strictly inside an image block (the per-sample block intervals are given as CSR
   arrays). A sample that cannot be cut that way (an image block longer than L) is dropped and counted;
   with policy "drop" every over-long sample is dropped and counted. Nothing is ever truncated silently.
3. Bounded best-fit: at most `open_bins` packs are open. Each piece goes to the open pack with the least
   room that still fits it (ties: the oldest pack). If none fits, a new pack is opened; when the limit is
   reached the fullest open pack is closed first. A pack is closed at once when it is exactly full, and
   the remaining ones are closed in creation order at the end. Packs are emitted in closing order, the
   items of a pack in insertion order.

Output (CSR): pack p holds items pack_ptr[p]:pack_ptr[p+1]; item k is tokens
[item_start[k], item_end[k]) of sample item_sample[k] (an index into the input lengths).
"""

from __future__ import annotations

import bisect
import importlib.machinery
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


@dataclass
class PackResult:
    """Packs in CSR form plus what overflow handling did."""

    pack_ptr: np.ndarray
    item_sample: np.ndarray
    item_start: np.ndarray
    item_end: np.ndarray
    dropped: np.ndarray  # sample ids dropped (too long for the policy, or unsplittable)
    num_split: int  # samples cut into more than one piece
    dropped_tokens: int
    seq_length: int
    extra: dict = field(default_factory=dict)

    @property
    def num_packs(self) -> int:
        """Number of packs."""
        return len(self.pack_ptr) - 1

    def pack_lengths(self) -> np.ndarray:
        """Tokens used in each pack."""
        sizes = self.item_end - self.item_start
        return np.add.reduceat(sizes, self.pack_ptr[:-1]) if self.num_packs else np.zeros(0, np.int64)

    def fill(self) -> float:
        """Used tokens over pack capacity."""
        return float(self.pack_lengths().sum()) / max(1, self.num_packs * self.seq_length)

    def pack(self, p: int) -> list[tuple[int, int, int]]:
        """Items (sample, start, end) of pack p."""
        lo, hi = self.pack_ptr[p], self.pack_ptr[p + 1]
        return list(zip(self.item_sample[lo:hi].tolist(), self.item_start[lo:hi].tolist(),
                        self.item_end[lo:hi].tolist()))


# ----------------------------------------------------------------------------------------------------
# deterministic shuffle shared with C++


def _splitmix64(state: int) -> tuple[int, int]:
    state = (state + GOLDEN) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def seed_state(seed: int, epoch: int) -> int:
    """Initial generator state for (seed, epoch)."""
    return ((seed & MASK64) * GOLDEN ^ ((epoch + 1) * 0xD1B54A32D192ED03)) & MASK64


def shuffled_order_reference(n: int, seed: int, epoch: int) -> list[int]:
    """Fisher-Yates permutation of range(n) driven by splitmix64 (the C++ `shuffled_order` in Python)."""
    order = list(range(n))
    state = seed_state(seed, epoch)
    for i in range(n - 1, 0, -1):
        state, x = _splitmix64(state)
        j = (x * (i + 1)) >> 64  # multiply-shift range reduction: same result as C++'s 128-bit product
        order[i], order[j] = order[j], order[i]
    return order


# ----------------------------------------------------------------------------------------------------
# pure-Python reference packer


def split_points_reference(length: int, seq_length: int, blocks: list[tuple[int, int]]) -> list[tuple[int, int]] | None:
    """Pieces [start, end) of a sample of `length` tokens, cut outside image `blocks`; None if impossible."""
    pieces = []
    pos = 0
    b = 0
    while length - pos > seq_length:
        cut = pos + seq_length
        while b < len(blocks) and blocks[b][1] <= cut:
            b += 1
        if b < len(blocks) and blocks[b][0] < cut:
            cut = blocks[b][0]  # the cut would fall inside this image: move it to the image's start
        if cut <= pos:
            return None  # an image block alone is longer than seq_length
        pieces.append((pos, cut))
        pos = cut
    pieces.append((pos, length))
    return pieces


def _check_inputs(lengths, seq_length, block_ptr, block_start, block_end, overflow):
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    if seq_length <= 0:
        raise ValueError(f"seq_length must be positive, got {seq_length}")
    if overflow not in ("split", "drop"):
        raise ValueError(f"overflow policy must be 'split' or 'drop', got {overflow!r}")
    if len(lengths) and lengths.min() <= 0:
        raise ValueError("sample lengths must be positive")
    if block_ptr is None:
        block_ptr = np.zeros(len(lengths) + 1, np.int64)
        block_start = block_end = np.zeros(0, np.int64)
    block_ptr = np.ascontiguousarray(block_ptr, dtype=np.int64)
    block_start = np.ascontiguousarray(block_start, dtype=np.int64)
    block_end = np.ascontiguousarray(block_end, dtype=np.int64)
    if len(block_ptr) != len(lengths) + 1 or block_ptr[-1] != len(block_start) or len(block_end) != len(block_start):
        raise ValueError("block_ptr must have len(lengths)+1 entries ending at len(block_start)")
    return lengths, block_ptr, block_start, block_end


def pack_reference(
    lengths: np.ndarray,
    seq_length: int,
    seed: int,
    epoch: int = 0,
    block_ptr: np.ndarray | None = None,
    block_start: np.ndarray | None = None,
    block_end: np.ndarray | None = None,
    overflow: str = "split",
    open_bins: int = 256,
    shuffle: bool = True,
) -> PackResult:
    """Pure-Python implementation of the packer (slow; defines the algorithm the C++ one must match)."""
    lengths, block_ptr, block_start, block_end = _check_inputs(
        lengths, seq_length, block_ptr, block_start, block_end, overflow)
    n = len(lengths)
    order = shuffled_order_reference(n, seed, epoch) if shuffle else range(n)
    lens = lengths.tolist()
    bptr, bstart, bend = block_ptr.tolist(), block_start.tolist(), block_end.tolist()

    items: list[tuple[int, int, int, int]] = []  # (bin, sample, start, end)
    open_list: list[tuple[int, int]] = []  # sorted (room, bin id)
    closed: list[int] = []
    dropped: list[int] = []
    num_split = dropped_tokens = 0
    next_bin = 0

    for s in order:
        length = lens[s]
        if length > seq_length:
            pieces = None
            if overflow == "split":
                blocks = list(zip(bstart[bptr[s]:bptr[s + 1]], bend[bptr[s]:bptr[s + 1]]))
                pieces = split_points_reference(length, seq_length, blocks)
            if pieces is None:
                dropped.append(s)
                dropped_tokens += length
                continue
            num_split += 1
        else:
            pieces = [(0, length)]
        for start, end in pieces:
            size = end - start
            k = bisect.bisect_left(open_list, (size, -1))
            if k < len(open_list):
                room, b = open_list.pop(k)
                room -= size
            else:
                if len(open_list) >= open_bins:
                    closed.append(open_list.pop(0)[1])  # the fullest open pack (oldest among ties)
                b, room = next_bin, seq_length - size
                next_bin += 1
            items.append((b, s, start, end))
            if room == 0:
                closed.append(b)
            else:
                bisect.insort(open_list, (room, b))
    closed.extend(sorted(b for _, b in open_list))
    return _to_csr(items, closed, np.array(dropped, np.int64), num_split, dropped_tokens, seq_length)


def _to_csr(items, closed, dropped, num_split, dropped_tokens, seq_length) -> PackResult:
    rank = {b: r for r, b in enumerate(closed)}
    counts = np.zeros(len(closed), np.int64)
    for b, *_ in items:
        counts[rank[b]] += 1
    ptr = np.zeros(len(closed) + 1, np.int64)
    np.cumsum(counts, out=ptr[1:])
    fill = ptr[:-1].copy()
    out = np.zeros((3, len(items)), np.int64)
    for b, s, start, end in items:  # stable: items keep insertion order inside a pack
        k = fill[rank[b]]
        out[:, k] = (s, start, end)
        fill[rank[b]] += 1
    return PackResult(ptr, out[0], out[1], out[2], dropped, num_split, dropped_tokens, seq_length)


# ----------------------------------------------------------------------------------------------------
# C++ front end


def pack(
    lengths: np.ndarray,
    seq_length: int,
    seed: int,
    epoch: int = 0,
    block_ptr: np.ndarray | None = None,
    block_start: np.ndarray | None = None,
    block_end: np.ndarray | None = None,
    overflow: str = "split",
    open_bins: int = 256,
    shuffle: bool = True,
) -> PackResult:
    """Pack sample lengths into sequences of `seq_length` tokens (C++; same result as `pack_reference`)."""
    from megatron_solo import _csrc

    lengths, block_ptr, block_start, block_end = _check_inputs(
        lengths, seq_length, block_ptr, block_start, block_end, overflow)
    out = _csrc.pack_samples(lengths, int(seq_length), int(seed), int(epoch), block_ptr, block_start,
                             block_end, overflow == "split", int(open_bins), bool(shuffle))
    return PackResult(out["pack_ptr"], out["item_sample"], out["item_start"], out["item_end"],
                      out["dropped"], int(out["num_split"]), int(out["dropped_tokens"]), seq_length)


def shuffled_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The packer's permutation of range(n) for (seed, epoch), from C++."""
    from megatron_solo import _csrc

    return _csrc.shuffled_order(int(n), int(seed), int(epoch))


# ----------------------------------------------------------------------------------------------------
# blending


def _megatron_helpers():
    """megatron-core's helpers_cpp, loaded from its file so the heavy megatron.core package is not imported."""
    spec = importlib.util.find_spec("megatron")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("megatron-core is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / "core" / "datasets"
    candidates = sorted(folder.glob("helpers_cpp*.so")) + sorted(folder.glob("helpers_cpp*.pyd"))
    if not candidates:
        from megatron.core.datasets import helpers_cpp  # built on the fly by some installs

        return helpers_cpp
    loader = importlib.machinery.ExtensionFileLoader("megatron.core.datasets.helpers_cpp", str(candidates[0]))
    module_spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(module_spec)
    loader.exec_module(module)
    return module


def normalize_weights(weights) -> np.ndarray:
    """Weights as float64 summing to 1; all must be positive."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or (w <= 0).any() or not np.isfinite(w).all():
        raise ValueError(f"blend weights must be positive and finite, got {list(weights)}")
    return w / w.sum()


def blend_indices(weights, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset index, sample index within it) for `size` draws following `weights` (megatron-core helper)."""
    w = normalize_weights(weights)
    if len(w) > np.iinfo(np.int16).max:
        raise ValueError("at most 32767 datasets in a blend")
    dataset_index = np.zeros(size, dtype=np.int16)
    sample_index = np.zeros(size, dtype=np.int64)
    _megatron_helpers().build_blending_indices(dataset_index, sample_index, w, len(w), size, False)
    return dataset_index, sample_index


def blend_indices_reference(weights, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pure-Python `blend_indices`: each draw goes to the dataset furthest behind its share."""
    w = normalize_weights(weights).tolist()
    current = [0] * len(w)
    dataset_index = np.zeros(size, dtype=np.int16)
    sample_index = np.zeros(size, dtype=np.int64)
    for i in range(size):
        scale = max(float(i), 1.0)
        best, best_err = 0, w[0] * scale - current[0]
        for d in range(1, len(w)):
            err = w[d] * scale - current[d]
            if err > best_err:
                best, best_err = d, err
        dataset_index[i] = best
        sample_index[i] = current[best]
        current[best] += 1
    return dataset_index, sample_index
