"""A checkpoint loads for export or evaluation whatever layers and precision it was trained with.

Training records its run choices (``transformer_impl``, ``fp8``, its recipe) in solo_model.json; a reader
builds the model for its own machine and precision, here the local spec in fp32 on a CPU.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megatron_solo.checkpoint.metadata import write_metadata
from megatron_solo.checkpoint.model_io import load_solo_model
from megatron_solo.checkpoint.state import TrainState, save_checkpoint
from megatron_solo.config import ParallelConfig
from megatron_solo.model.builder import solo_provider
from megatron_solo.model.chunks import build_model_chunks
from megatron_solo.platform import init_parallel
from tests.harness import solo_batches as SB

TRAINED_WITH = {"transformer_impl": "te", "fp8": "hybrid", "fp8_recipe": "blockwise", "fp8_amax_history_len": 16,
                "packed_attention": "flex", "fused_kernels": True}


@pytest.fixture(scope="module")
def fp8_checkpoint(tmp_path_factory):
    """A tiny model saved by this machine, its solo_model.json saying TE + FP8 as an FP8 run writes it."""
    from megatron_solo.platform.distributed import init_distributed

    init_distributed()
    root = tmp_path_factory.mktemp("fp8_run")
    parallel = ParallelConfig()
    init_parallel(parallel, seed=11)
    torch.manual_seed(11)
    cfg = SB.tiny_solo_config()
    chunks = build_model_chunks(solo_provider(cfg, parallel), parallel)
    save_checkpoint(str(root), TrainState(iteration=2), chunks)
    write_metadata(root, dataclasses.replace(cfg, **TRAINED_WITH), parallel)
    weights = {k: v.detach().clone() for k, v in chunks[0].state_dict().items() if torch.is_tensor(v)}
    return root, weights


@pytest.mark.parametrize("in_place", [False, True], ids=["evaluation", "export"])
def test_fp8_trained_checkpoint_loads_on_the_local_spec_in_fp32(fp8_checkpoint, in_place):
    root, weights = fp8_checkpoint
    chunks, cfg = load_solo_model(root, ParallelConfig(), in_place=in_place)
    assert {k: getattr(cfg, k) for k in TRAINED_WITH} == TRAINED_WITH  # recorded, returned as recorded
    built = chunks[0].config
    assert built.fp8 is None and built.params_dtype == torch.float32
    loaded = {k: v for k, v in chunks[0].state_dict().items() if torch.is_tensor(v)}
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
