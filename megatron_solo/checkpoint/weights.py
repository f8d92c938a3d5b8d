"""Weights-only checkpoint I/O with bounded memory: in-place loading (export) and owned storage (import)."""

from __future__ import annotations

import torch


def load_in_place(ckpt: str, chunk: torch.nn.Module) -> None:
    """Load a TP1 chunk's weights straight into its parameters (no second copy of the model).

    megatron-core describes SwiGLU fc1 by a factory (gate and up halves, merged into a new tensor
    after loading); at TP1 the stored [gate; up] block of a layer IS the parameter, so fc1 is asked
    for as one plain ShardedTensor and read in place like every other weight.
    """
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    from megatron_solo.checkpoint.names import is_extra_state
    from megatron_solo.checkpoint.state import read_sharded

    # Weights only: FP8 metadata (``_extra_state``, pickled objects) is neither needed nor read.
    sharded = {k: v for k, v in chunk.sharded_state_dict().items() if not is_extra_state(k)}
    params = {p.data_ptr(): p for p in chunk.parameters()}
    for key, value in list(sharded.items()):
        if not isinstance(value, ShardedTensorFactory):
            continue
        gate = next(iter(_flat(value.build())))
        layers = gate.global_shape[0] if gate.prepend_axis_num else None
        rank_offsets = [(0, gate.global_offset[0], layers)] if layers else []
        sharded[key] = ShardedTensor.from_rank_offsets(
            value.key, value.data, *rank_offsets, replica_id=gate.replica_id,
            prepend_axis_num=gate.prepend_axis_num,
        )
    loaded = read_sharded(sharded, ckpt)
    for name, t in loaded.items():
        if torch.is_tensor(t):
            p = params.get(t.data_ptr())
            if p is None:  # not read in place: copy
                chunk.state_dict()[name].copy_(t)
    del loaded


def _flat(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _flat(v)
    elif isinstance(x, list | tuple):
        for v in x:
            yield from _flat(v)
    else:
        yield x


class Prebuilt(torch.nn.Module):
    """Stands in for a model chunk in save_checkpoint: returns a prepared sharded state dict."""

    def __init__(self, sharded: dict):
        super().__init__()
        self._sharded = sharded

    def sharded_state_dict(self) -> dict:
        """The prepared dict."""
        return self._sharded


def own_storage_sharded_state_dict(chunk: torch.nn.Module) -> dict:
    """The chunk's sharded state dict with factories built and their views moved to own storage.

    megatron-core's checkpoint writer clones every tensor that is a view (SwiGLU fc1 is saved as its
    gate and up halves: views), which would hold ~1.5 copies of the weights at once. Here each fc1
    is split into owned halves one at a time and the parameter's storage is released (the chunk is
    only saved afterwards, never used again).
    """
    from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    sharded = chunk.sharded_state_dict()
    params = {p.data_ptr(): p for p in chunk.parameters()}
    for key, value in list(sharded.items()):
        if not isinstance(value, ShardedTensorFactory):
            continue
        built = value.build()

        def own(x):
            if isinstance(x, ShardedTensor) and x.data is not None:
                x.data = x.data.clone()
            return x

        dict_list_map_inplace(own, built)
        param = params.get(value.data.data_ptr())
        if param is not None:
            param.data = torch.empty(0, dtype=param.dtype)
        sharded[key] = built
    return sharded
