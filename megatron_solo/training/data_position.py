"""The data of a step in words: which packs each micro-batch read, and the source and key of their samples."""

from __future__ import annotations

from megatron_solo.data.overflow import source_labels


def micro_batch_packs(before: int, dp_rank: int, micro: int, micro_batch_size: int, dp_world: int) -> list[int]:
    """Global pack indices that ``micro``-batch of data-parallel rank ``dp_rank`` read, the loader at ``before``.

    The loader's layout: at micro-step t rank r of W reads packs before + t*W*B + r*B ... + B-1.
    """
    first = before + micro * dp_world * micro_batch_size + dp_rank * micro_batch_size
    return list(range(first, first + micro_batch_size))


def pack_samples(dataset, g: int) -> list[str]:
    """``source:key`` of every sample (or piece of one) in global pack ``g`` of a PackedDataset."""
    epoch, p = dataset.locate(int(g))
    plan = dataset.plan(epoch)
    labels = source_labels(dataset.config.datasets)
    out = []
    for stream_pos, _start, _end in plan.packs.pack(p):
        d = int(plan.dataset[stream_pos])
        shard_set = dataset.sets[d]
        shard, j = shard_set.locate(int(plan.sample[stream_pos]))
        out.append(f"{labels[d]}:{shard_set.indexes[shard].keys[j]}")
    return out


def describe_packs(dataset, packs: list[int], limit: int = 8) -> str:
    """``pack g [source:key, ...]`` for each of ``packs`` (the first ``limit`` of them, then a count)."""
    shown = [f"pack {g} [{', '.join(pack_samples(dataset, g))}]" for g in packs[:limit]]
    if len(packs) > limit:
        shown.append(f"and {len(packs) - limit} more packs")
    return "; ".join(shown)
