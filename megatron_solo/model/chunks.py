"""The model chunks of this rank: one per virtual pipeline stage, and the module inside any wrapper."""

from __future__ import annotations

from collections.abc import Callable

import torch

from megatron_solo.config.parallel import ParallelConfig

# provider(pre_process, post_process, vp_stage) -> an unwrapped megatron module
ModelProvider = Callable[[bool, bool, "int | None"], torch.nn.Module]


def build_model_chunks(provider: ModelProvider, parallel: ParallelConfig) -> list[torch.nn.Module]:
    """The unwrapped chunks this rank holds, first and last stage decided by megatron-core."""
    from megatron.core import parallel_state as ps

    from megatron_solo.platform.distributed import current_device

    vpp = parallel.vpp
    chunks = []
    for vp_stage in range(vpp or 1):
        stage = vp_stage if vpp else None
        pre = ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage)
        post = ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage)
        chunk = provider(pre, post, stage)
        chunk.model_type = getattr(chunk, "model_type", None) or _encoder_or_decoder()
        chunks.append(chunk.to(current_device()))
    return chunks


def _encoder_or_decoder():
    from megatron.core.enums import ModelType

    return ModelType.encoder_or_decoder


def unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP / Float16Module wrappers."""
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk
