"""The distributed optimizer's state saved at one TP/PP layout, read at another.

The distributed optimizer is saved in megatron-core's ``dp_reshardable`` format: per model-parallel rank
(``dp_group_idx``) and grad-buffer bucket, one flat tensor per state (fp32 main parameter, ``exp_avg``,
``exp_avg_sq``) in the bucket's own order, each data-parallel rank writing its slice, with no gather and no copy.
megatron-core reads it back at another data-parallel size only, as the order of a bucket follows the TP/PP shard.

So that it reads at any layout, each save also writes the bucket index (``INDEX_DIR``, JSON, one file per
model-parallel rank, by its data-parallel rank 0): for every bucket, where each parameter starts and which parts of
which model tensors it holds (the model's sharded keys, global offsets and shapes). At another TP/PP layout each rank
asks the saved buckets for the ranges that overlap the parts of its own parameters inside its data-parallel shard,
and copies the overlaps into place: it reads about its own share, never a whole TP/PP shard.
"""

from __future__ import annotations

import bisect
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from megatron_solo.checkpoint.layout import CheckpointError

INDEX_DIR = "solo_optimizer_index"  # inside iter_N: <chain position>.<dp_group_idx>.json


@dataclass(frozen=True)
class Piece:
    """One sharded tensor a model parameter is saved as: a row-major run of the parameter's elements."""

    key: str
    offset: tuple[int, ...]  # in the global tensor, one per global axis
    shape: tuple[int, ...]  # its extent per global axis (1 along the prepended ones)
    prepend: int  # the prepended axes (a layer's position in the stack): the rows are along axis ``prepend``
    flat: int  # where it starts among the parameter's elements

    @property
    def row(self) -> int:
        """Elements per row (per step along axis ``prepend``)."""
        return math.prod(self.shape[self.prepend + 1:])


def pieces(sharded_meta, param: torch.Tensor) -> list[Piece]:
    """The pieces ``param`` is saved as, from its model ShardedTensor or ShardedTensorFactory."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory

    built = list(nested_values(replace(sharded_meta, data=param).build())) \
        if isinstance(sharded_meta, ShardedTensorFactory) else [replace(sharded_meta, data=param)]
    out = []
    for t in built:
        if not t.data.is_contiguous():  # a factory splitting along a later axis: no row-major run
            raise NotImplementedError(f"{t.key}: a parameter saved as non-contiguous parts")
        flat = (t.data.data_ptr() - param.data_ptr()) // param.element_size()
        out.append(Piece(t.key, tuple(t.global_offset), (1,) * t.prepend_axis_num + tuple(t.local_shape),
                         t.prepend_axis_num, flat))
    return out


def _param_metadata(model_sharded: dict[str, Any]) -> dict[torch.Tensor, Any]:
    """Each model parameter's ShardedTensor (or factory) in a model sharded state dict, by the parameter."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.utils import extract_sharded_tensors_and_factories

    tensors, _ = extract_sharded_tensors_and_factories(model_sharded)
    return {sh.data: sh for sh in nested_values(tensors)}


def distributed_optimizers(optimizer) -> list[tuple[int, Any, str]]:
    """(chain position, DistributedOptimizer, the prefix megatron-core gives its keys) of ``optimizer``."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    chain = getattr(optimizer, "chained_optimizers", [optimizer])
    return [(i, opt, f"chained_{i}." if len(chain) > 1 else "") for i, opt in enumerate(chain)
            if isinstance(opt, DistributedOptimizer)]


def bucket_index(opt, prefix: str, model_sharded: dict[str, Any]) -> list[dict]:
    """Per bucket of ``opt``'s grad buffers: its saved key, its length and, per parameter, start and pieces
    (lists only: equal to what its JSON file reads back as)."""
    meta = _param_metadata(model_sharded)
    buckets = []
    for gbuf_idx, ranges in enumerate(opt.gbuf_ranges):
        buffer = opt.buffers[gbuf_idx]
        (dtype,) = ranges.keys()  # megatron-core: one dtype per buffer
        for bucket_idx, bucket in enumerate(buffer.buckets):
            params = [[start - bucket.offset, [list(_piece_json(p)) for p in pieces(meta[param], param)]]
                      for param, (start, _, b) in buffer.param_index_map.items() if b == bucket_idx]
            buckets.append({"key": f"{prefix}optimizer.distributed.dp_group_idx_{opt.data_parallel_group_idx}"
                                   f".gbuf_idx_{gbuf_idx}.dtype_{dtype}.bucket_idx_{bucket_idx}",
                            "numel": bucket.numel_unpadded, "params": sorted(params)})
    return buckets


def _piece_json(p: Piece) -> tuple:
    return p.key, list(p.offset), list(p.shape), p.prepend, p.flat


def write_bucket_indices(ckpt: str, optimizer, model_sharded: dict[str, Any]) -> None:
    """Write the bucket index of each model-parallel rank into checkpoint folder ``ckpt`` (its DP rank 0 does)."""
    for i, opt, prefix in distributed_optimizers(optimizer):
        if opt.data_parallel_group.rank() != 0 or opt.distributed_optimizer_instance_id != 0:
            continue
        path = Path(ckpt, INDEX_DIR, f"{i}.{opt.data_parallel_group_idx}.json")
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(bucket_index(opt, prefix, model_sharded)))


def read_bucket_indices(ckpt: str, position: int) -> dict[int, list[dict]]:
    """{dp_group_idx: bucket index} of the saved model-parallel ranks of chain position ``position``."""
    folder = Path(ckpt, INDEX_DIR)
    found = {}
    for name in sorted(os.listdir(folder)) if folder.is_dir() else []:
        chain, _, group = name.removesuffix(".json").partition(".")
        if chain == str(position) and group.isdigit():
            found[int(group)] = json.loads((folder / name).read_text())
    return found


@dataclass
class _Overlap:
    """One part of a parameter here that one saved piece holds: where to read it and where it goes."""

    source: str  # the saved bucket key
    start: int  # the rows' first element in the saved bucket
    shape: tuple[int, ...]  # the rows read, shaped as the saved piece
    src: tuple[slice, ...]  # the overlap within them
    dst: tuple[slice, ...]  # the overlap within the rows of the piece here


@dataclass
class _PieceHere:
    """A piece of a parameter here, cut to the rows that hold elements of this rank's shard."""

    param: torch.Tensor  # the model parameter
    piece: Piece
    rows: tuple[int, int]
    shard: tuple[int, int]  # the parameter's elements this rank's optimizer holds
    overlaps: list[_Overlap]


class Reshard:
    """Read one DistributedOptimizer's state from a checkpoint of another TP/PP layout (:func:`request`,
    ``dist_checkpointing.load``, then :meth:`apply`)."""

    def __init__(self, opt, model_sharded: dict[str, Any], saved: dict[int, list[dict]]) -> None:
        self.opt = opt
        first = next(_held_params(opt), None)
        self.states = [] if first is None else \
            [k for k in opt._get_main_param_and_optimizer_states(first[0]) if k != "step"]
        held = {}  # key -> {(offset, shape): (saved piece, its bucket key, its first element in the bucket)}
        for _, buckets in sorted(saved.items()):
            for bucket in buckets:
                for start, entries in bucket["params"]:
                    for key, offset, shape, prepend, flat in entries:
                        piece = Piece(key, tuple(offset), tuple(shape), prepend, flat)
                        # a part several ranks hold (a norm under TP): one of them is read
                        held.setdefault(key, {}).setdefault((piece.offset, piece.shape),
                                                            (piece, bucket["key"], start + flat))
        self.numel = {b["key"]: b["numel"] for buckets in saved.values() for b in buckets}
        meta = _param_metadata(model_sharded)
        self.here = []
        for param, where in _held_params(opt):
            shard = (where["param"].start, where["param"].end)
            self.here += [self._cut(param, p, shard, held) for p in pieces(meta[param], param)]
        self.here = [h for h in self.here if h is not None]
        self.ranges = self._merged_ranges()

    @staticmethod
    def _cut(param, piece: Piece, shard: tuple[int, int], held: dict) -> _PieceHere | None:
        first, end = max(shard[0], piece.flat), min(shard[1], piece.flat + math.prod(piece.shape))
        if first >= end:
            return None
        rows = ((first - piece.flat) // piece.row, -(-(end - piece.flat) // piece.row))
        axis = piece.prepend
        lo = list(piece.offset)
        hi = [o + s for o, s in zip(piece.offset, piece.shape)]
        lo[axis], hi[axis] = piece.offset[axis] + rows[0], piece.offset[axis] + rows[1]
        overlaps, covered = [], 0
        for saved, source, start in held.get(piece.key, {}).values():
            a = [max(x, o) for x, o in zip(lo, saved.offset)]
            b = [min(y, o + s) for y, o, s in zip(hi, saved.offset, saved.shape)]
            if any(x >= y for x, y in zip(a, b)):
                continue
            first_row, end_row = a[axis] - saved.offset[axis], b[axis] - saved.offset[axis]
            shape = saved.shape[:axis] + (end_row - first_row,) + saved.shape[axis + 1:]
            src = tuple(slice(0, y - x) if d == axis else slice(x - o, y - o)
                        for d, (x, y, o) in enumerate(zip(a, b, saved.offset)))
            dst = tuple(slice(x - o - rows[0], y - o - rows[0]) if d == axis else slice(x - o, y - o)
                        for d, (x, y, o) in enumerate(zip(a, b, piece.offset)))
            overlaps.append(_Overlap(source, start + first_row * saved.row, shape, src, dst))
            covered += math.prod(y - x for x, y in zip(a, b))
        if covered != math.prod(y - x for x, y in zip(lo, hi)):
            raise CheckpointError(f"the checkpoint's optimizer state does not cover {piece.key} at offset "
                                  f"{piece.offset} of this layout (saved by another model?)")
        return _PieceHere(param, piece, rows, shard, overlaps)

    def _merged_ranges(self) -> dict[str, list[tuple[int, int]]]:
        """Per saved bucket key, the disjoint ranges that hold every overlap (sorted)."""
        wanted: dict[str, list[tuple[int, int]]] = {}
        for h in self.here:
            for o in h.overlaps:
                wanted.setdefault(o.source, []).append((o.start, o.start + math.prod(o.shape)))
        merged = {}
        for source, ranges in wanted.items():
            out: list[list[int]] = []
            for first, end in sorted(ranges):
                if out and first <= out[-1][1]:
                    out[-1][1] = max(out[-1][1], end)
                else:
                    out.append([first, end])
            merged[source] = [tuple(r) for r in out]
        return merged

    def request(self) -> dict[str, list]:
        """The sharded tensors to load: per saved bucket key and state, one 1-D tensor per merged range."""
        from megatron.core.dist_checkpointing.mapping import ShardedTensor

        out = {}
        for source, ranges in self.ranges.items():
            for state in self.states:
                out[f"{source}.{state}"] = [
                    ShardedTensor(f"{source}.{state}", torch.empty(end - first), torch.float32, (end - first,),
                                  (self.numel[source],), (first,), None, replica_id=0)
                    for first, end in ranges]
        return out

    def apply(self, loaded: dict[str, list[torch.Tensor]]) -> None:
        """Copy each overlap from the loaded ranges into the optimizer's main parameters and moments."""
        by_param: dict[torch.Tensor, list[_PieceHere]] = {}
        for h in self.here:
            by_param.setdefault(h.param, []).append(h)
        for param, cut in by_param.items():
            tensors = self.opt._get_main_param_and_optimizer_states(param)
            for state in self.states:
                for h in cut:
                    self._fill(h, tensors[state], loaded, state)
            self.opt._set_main_param_and_optimizer_states(param, tensors)

    def _fill(self, h: _PieceHere, dst: torch.Tensor, loaded: dict, state: str) -> None:
        rows = torch.empty(h.piece.shape[:h.piece.prepend] + (h.rows[1] - h.rows[0],)
                           + h.piece.shape[h.piece.prepend + 1:], dtype=torch.float32)
        for o in h.overlaps:
            chunks = self.ranges[o.source]
            i = bisect.bisect_right(chunks, (o.start, math.inf)) - 1
            begin = o.start - chunks[i][0]
            rows[o.dst] = loaded[f"{o.source}.{state}"][i][begin:begin + math.prod(o.shape)].view(o.shape)[o.src]
        first = h.piece.flat + h.rows[0] * h.piece.row  # the rows' first element in the parameter
        a, b = max(h.shard[0], first), min(h.shard[1], first + rows.numel())
        dst[a - h.shard[0]:b - h.shard[0]].copy_(rows.view(-1)[a - first:b - first])


def _held_params(opt) -> Iterator[tuple[torch.Tensor, dict]]:
    """(parameter, its ranges) of each parameter whose shard this rank's optimizer holds, bucket by bucket."""
    for ranges in opt.gbuf_ranges:
        for per_bucket in ranges.values():
            for bucket in per_bucket:
                yield from bucket["param_map"].items()
