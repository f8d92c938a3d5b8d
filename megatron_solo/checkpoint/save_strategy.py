"""The strategy a checkpoint's shards are written with: spread over the data-parallel replicas, planned once.

megatron-core's ``FullyParallelSaveStrategyWrapper`` hands each tensor that several data-parallel ranks hold
(the weights, the RNG-free common part) to one of them, so every replica writes its part instead of DP rank 0
writing all; ``TorchDistSaveShardedStrategy(cached_metadata=True)`` keeps torch DCP's save plan and global
metadata, so from the third save on a save starts without gathering every rank's plan. Both caches are right
only while the sharded state dict keeps its structure: one strategy is kept per structure (a fingerprint of
every sharded entry's key, shape, offset, dtype and replica) and process group, and every rank starts a new
one when any rank's structure changed (one small all-reduce per save), so all ranks plan alike.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


@dataclass
class _Kept:
    fingerprint: str
    group: Any  # the data-parallel group the strategy spreads the writes over (held: a rebuilt one differs)
    strategy: Any


_kept: _Kept | None = None


def _entry(value: Any) -> tuple | None:
    """What of one sharded entry a save plan depends on (None: not written as a shard)."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, ShardedTensorFactory

    if isinstance(value, ShardedTensor):
        return ("T", value.key, value.global_shape, value.global_offset, value.local_shape, str(value.dtype),
                value.replica_id, value.prepend_axis_num, value.axis_fragmentations)
    if isinstance(value, ShardedObject):
        return ("O", value.key, value.global_shape, value.global_offset, value.replica_id)
    if isinstance(value, ShardedTensorFactory):
        return ("F", value.key, tuple(value.data.shape), str(value.data.dtype), value.replica_id)
    return None


def structure_fingerprint(sharded: dict[str, Any]) -> str:
    """A digest of the structure of a sharded state dict (keys, shapes, offsets, dtypes, replicas)."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values

    digest = hashlib.sha256()
    for value in nested_values(sharded):
        entry = _entry(value)
        if entry is not None:
            digest.update(repr(entry).encode())
    return digest.hexdigest()


def save_strategy(sharded: dict[str, Any]) -> tuple[Any, bool]:
    """(the strategy to save ``sharded`` with, whether it is new: then validate the sharding).

    Collective: every rank calls it for every save.
    """
    from megatron.core import parallel_state as ps

    from megatron_solo.platform.distributed import ranks_with

    global _kept
    group = ps.get_data_parallel_group(with_context_parallel=True)
    fingerprint = structure_fingerprint(sharded)
    changed = _kept is None or _kept.fingerprint != fingerprint or _kept.group is not group
    if not ranks_with(changed):
        return _kept.strategy, False
    _kept = _Kept(fingerprint, group, _new_strategy(group))
    return _kept.strategy, True


def _new_strategy(group) -> Any:
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

    base = TorchDistSaveShardedStrategy("torch_dist", 1, cached_metadata=True)
    return FullyParallelSaveStrategyWrapper(base, group, do_cache_distribution=True)
