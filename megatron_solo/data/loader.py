"""Rank-sharded, resumable iteration over the packs of a PackedDataset (DataLoader workers decode).

Global pack g is the unit: at micro-step t, DP rank r of W takes packs t*W*B + r*B ... + B-1, the layout
of megatron-core's pretraining sampler. The state is the number of packs consumed over all ranks, so a
run resumed from a checkpoint (even with another number of workers) sees exactly the packs it would have.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from megatron_solo.config.data import DataConfig
from megatron_solo.data.dataset import PackedDataset, collate_packs
from megatron_solo.data.image import PATCH_SIZE
from megatron_solo.platform.processes import keep_helper_signals


class _RankSampler(torch.utils.data.Sampler):
    """Global pack indices of one DP rank from `start` on: rank r takes B packs of every W*B block."""

    def __init__(self, start: int, micro_batch_size: int, rank: int, world_size: int, limit: int | None):
        self.start, self.B, self.rank, self.W, self.limit = start, micro_batch_size, rank, world_size, limit

    def __iter__(self) -> Iterator[int]:
        g = self.start
        while self.limit is None or g + self.W * self.B <= self.limit:
            base = g + self.rank * self.B
            yield from range(base, base + self.B)
            g += self.W * self.B


class PackedDataLoader:
    """Rank-sharded iteration over packs with a resumable state (packs consumed over all ranks)."""

    def __init__(self, dataset: PackedDataset, micro_batch_size: int = 1, rank: int = 0, world_size: int = 1,
                 num_workers: int = 2, limit: int | None = None, prefetch_factor: int = 2, pin_memory: bool = False):
        """`limit`: stop before this many global packs (None: run through epochs without end).

        ``pin_memory``: batches in page-locked memory, so that their copy to a GPU does not block the host.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        self.dataset, self.B, self.rank, self.W = dataset, micro_batch_size, rank, world_size
        self.num_workers, self.limit, self.prefetch_factor = num_workers, limit, prefetch_factor
        self.pin_memory = pin_memory
        self.consumed_packs = 0

    def __iter__(self) -> Iterator[dict]:
        self.dataset.epoch_size(self.dataset.locate(self.consumed_packs)[0])  # plan before forking workers
        sampler = _RankSampler(self.consumed_packs, self.B, self.rank, self.W, self.limit)
        # a worker forked by a trainer ignores the job's signals, which torch's worker set-up undoes
        kw = {"prefetch_factor": self.prefetch_factor, "worker_init_fn": keep_helper_signals} if self.num_workers else {}
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.B, sampler=sampler,
                                             num_workers=self.num_workers, collate_fn=collate_packs,
                                             pin_memory=self.pin_memory, **kw)
        for batch in loader:
            self.consumed_packs += self.B * self.W
            yield batch

    def state_dict(self) -> dict:
        """What a checkpoint needs to resume on exactly the next packs."""
        return {"consumed_packs": self.consumed_packs, "fingerprint": self.dataset.fingerprint(),
                "micro_batch_size": self.B, "world_size": self.W}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Resume after `state["consumed_packs"]` packs; refuses another data blend unless strict=False."""
        if strict and state.get("fingerprint") != self.dataset.fingerprint():
            raise ValueError("the data blend (shards, weights, seq_length, seed or packing policy) differs from "
                             "the checkpoint's; pass strict=False to resume anyway")
        consumed = int(state["consumed_packs"])
        if consumed % (self.B * self.W):
            raise ValueError(f"consumed_packs {consumed} is not a multiple of micro batch x DP size "
                             f"{self.B * self.W}")
        self.consumed_packs = consumed


def build_data_loader(config: DataConfig, seq_length: int, micro_batch_size: int, patch_size: int = PATCH_SIZE,
                      rank: int = 0, world_size: int = 1, limit: int | None = None,
                      pin_memory: bool = False) -> PackedDataLoader:
    """PackedDataset + rank-sharded loader: the blend from ``config``, pack shape from the run and model."""
    return PackedDataLoader(PackedDataset(config, seq_length, patch_size), micro_batch_size, rank, world_size,
                            config.num_workers, limit, pin_memory=pin_memory)
