"""Workers for the RNG-tracker test (importable by spawned processes)."""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F

from megatron_solo.config import ParallelConfig
from megatron_solo.platform import init_parallel


def dropout_masks(out_dir: str) -> None:
    """Draw dropout masks inside and outside the model-parallel RNG fork and record them."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    init_parallel(ParallelConfig(tensor_parallel=2), seed=123)
    ones = torch.ones(4096)
    before = torch.get_rng_state()
    with get_cuda_rng_tracker().fork():
        forked = F.dropout(ones, p=0.5)
    restored = torch.equal(torch.get_rng_state(), before)
    shared = F.dropout(ones, p=0.5)
    rank = ps.get_tensor_model_parallel_rank()
    with open(os.path.join(out_dir, f"tp{rank}.json"), "w") as f:
        json.dump({"forked": forked.nonzero().flatten().tolist(), "shared": shared.nonzero().flatten().tolist(),
                   "restored": restored}, f)
