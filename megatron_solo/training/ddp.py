"""Wrap model chunks in megatron-core's DistributedDataParallel for training."""

from __future__ import annotations

import torch

from megatron_solo.config.parallel import ParallelConfig


def wrap_ddp(chunks: list[torch.nn.Module], parallel: ParallelConfig, grad_reduce_in_fp32: bool = True):
    """Wrap each chunk in megatron-core's DistributedDataParallel (contiguous grad buffers)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=grad_reduce_in_fp32,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
        overlap_grad_reduce=False,
        check_for_nan_in_grad=False,  # training.guard checks every step, all ranks agreeing, naming the data
    )
    wrapped = []
    for i, chunk in enumerate(chunks):
        # Only the first chunk's buffer starts a bucket boundary; later chunks are
        # not bucketed, as Megatron-LM does, so reductions line up across stages.
        wrapped.append(
            DistributedDataParallel(chunk.config, ddp_config, chunk, disable_bucketing=i > 0)
        )
    return wrapped
