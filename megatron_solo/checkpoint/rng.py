"""Random generator states in a checkpoint, as plain uint8 tensors: read back without unpickling anything.

Each state is one ShardedTensor of global shape (PP, TP, DP, bytes) written at this rank's cell of the
saving layout: the CPU generator, the CUDA generator on GPU runs, and every stream of megatron-core's
model-parallel RNG tracker (``tracker/<name>``). They are restored only at the layout that saved them
(another layout has other streams per rank) and when the checkpoint holds them all with this run's
sizes (a GPU checkpoint resumed on a CPU, or one written before this format, starts fresh streams).
"""

from __future__ import annotations

from typing import Any

import torch

PREFIX = "rng_state/"
TRACKER = "tracker/"
Layout = tuple[int, int, int, int, int, int]  # (pp, tp, dp, pp_rank, tp_rank, dp_rank)


def rng_states() -> dict[str, torch.Tensor]:
    """This rank's generator states by name (CPU uint8 tensors, copies)."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    from megatron_solo.platform.distributed import uses_cuda

    states = {"cpu": torch.get_rng_state()}
    if uses_cuda():
        states["cuda"] = torch.cuda.get_rng_state()
    for name, state in get_cuda_rng_tracker().get_states().items():
        states[TRACKER + name] = state
    return {name: state.detach().cpu().clone() for name, state in states.items()}


def rng_sharded_state_dict(layout: Layout) -> dict[str, Any]:
    """This rank's RNG states as ShardedTensors over the (PP, TP, DP) grid of ``layout`` (save, or load into)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    pp, tp, dp, pp_rank, tp_rank, dp_rank = layout
    return {
        name: ShardedTensor.from_rank_offsets(PREFIX + name, state, (0, pp_rank, pp), (1, tp_rank, tp),
                                              (2, dp_rank, dp), replica_id=0, prepend_axis_num=3)
        for name, state in rng_states().items()
    }


def rng_in_checkpoint(held: dict[str, Any], layout: Layout) -> bool:
    """Whether ``held`` (the checkpoint's tensor metadata by key) has every RNG state of this run, sized alike."""
    pp, tp, dp = layout[:3]
    for name, state in rng_states().items():
        meta = held.get(PREFIX + name)
        if meta is None or tuple(meta.global_shape) != (pp, tp, dp, state.numel()) or meta.dtype != state.dtype:
            return False
    return True


def restore_rng(loaded: dict[str, torch.Tensor]) -> None:
    """Set this rank's generators from states read by :func:`rng_sharded_state_dict`."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    torch.set_rng_state(loaded["cpu"].cpu())
    if "cuda" in loaded:
        torch.cuda.set_rng_state(loaded["cuda"].cpu())
    tracker = {name[len(TRACKER):]: t.cpu() for name, t in loaded.items() if name.startswith(TRACKER)}
    get_cuda_rng_tracker().set_states(tracker)
