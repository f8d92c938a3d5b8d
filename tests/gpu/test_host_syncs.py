"""The training step on the Transformer Engine path does not make the host wait for the GPU.

torch's sync debug mode warns at every call that blocks the host on the device (a device-to-host copy,
``.item()``, ``nonzero``); one micro-batch of packed image and text documents (pinned, as the loader gives it
on a GPU) goes through the training forward step and its backward on the TE spec (TE's attention, fused thd
RoPE), and every such call is recorded with where it came from. Building the model asks TE for its attention
kernels (model/te_attention.py): that question must be answered, not left to the first forward. On the smoke
run there is no CUDA to ask; the CPU suite counts the same host reads with a tensor subclass
(tests/model/test_host_syncs.py).
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from tests.gpu.checks import smoke
from tests.gpu.models import batches

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    smoke(), reason="no CUDA on the smoke run: tests/model/test_host_syncs.py counts the host reads on the CPU")]

SEQ = 1024


def test_the_te_training_step_does_not_wait_on_the_gpu(imported_mistral: str, transformer_engine: str, world1,
                                                       figures):
    from megatron_solo.checkpoint.model_io import load_solo_model
    from megatron_solo.config import ParallelConfig
    from megatron_solo.model.builder import build_solo_model
    from megatron_solo.platform import init_parallel
    from megatron_solo.training.forward_step import solo_forward_step

    figures.goal("no synchronizing CUDA call in the TE forward step and backward; TE answers the kernel question")
    init_parallel(ParallelConfig(), seed=5)
    _, cfg = load_solo_model(imported_mistral, ParallelConfig())
    with warnings.catch_warnings(record=True) as built:
        warnings.simplefilter("always")
        model = build_solo_model(dataclasses.replace(cfg, transformer_impl=transformer_engine), ParallelConfig(),
                                 bf16=True, packed_format="thd")
    unasked = [str(w.message) for w in built if "could not ask Transformer Engine" in str(w.message)]
    assert unasked == []
    assert model.config.apply_rope_fusion
    batch = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batches(1, SEQ, 1)[0].items()}
    solo_forward_step(iter([batch]), model)[0].float().sum().backward()  # TE picks its kernels once
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            losses, _ = solo_forward_step(iter([batch]), model)
            losses.float().sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message).lower()]
    figures.record(host_syncs=len(syncs), where=sorted(set(syncs))[:10])
    assert syncs == []
