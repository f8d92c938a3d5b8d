"""One optimizer step: megatron-core's forward-backward schedule, then the optimizer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


@dataclass
class StepResult:
    """What one training step reports (loss only on the last pipeline stage)."""

    loss: float | None
    num_tokens: int
    grad_norm: float | None
    skipped: bool


def train_step(
    forward_step: Callable,
    data_iterators: list[Iterator],
    chunks: list[torch.nn.Module],
    optimizer,
    scheduler,
    *,
    num_microbatches: int,
    seq_length: int,
    micro_batch_size: int,
    before_grad_sync: Callable[[], None] | None = None,
) -> StepResult:
    """Run forward/backward over ``num_microbatches`` micro-batches and one optimizer update.

    ``before_grad_sync`` is called as the gradient reduction across data-parallel ranks begins.
    """
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    for chunk in chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    config = chunks[0].config
    config.finalize_model_grads_func = _after(before_grad_sync, finalize_model_grads)
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = [c.no_sync for c in chunks] if len(chunks) > 1 else chunks[0].no_sync
    forward_backward = get_forward_backward_func()
    outputs = forward_backward(
        forward_step_func=forward_step,
        data_iterator=data_iterators if len(chunks) > 1 else data_iterators[0],
        model=chunks if len(chunks) > 1 else chunks[0],
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=False,
    )
    ok, grad_norm, _ = optimizer.step()
    if ok:
        scheduler.step(increment=1)
    loss, num_tokens = global_mean_loss(loss_totals(outputs))
    return StepResult(loss=loss, num_tokens=num_tokens, grad_norm=grad_norm, skipped=not ok)


def _after(first: Callable[[], None] | None, finalize: Callable) -> Callable:
    """``finalize`` (the schedule's grad-reduction hook), calling ``first`` as it is entered."""
    if first is None:
        return finalize

    def finalize_after(*args, **kwargs):
        first()
        return finalize(*args, **kwargs)

    return finalize_after


def loss_totals(outputs: list[dict]) -> torch.Tensor | None:
    """[sum of token losses, number of loss tokens] over a schedule's micro-batch outputs (last stage only)."""
    from megatron.core import parallel_state as ps

    if not ps.is_pipeline_last_stage(ignore_virtual=True):
        return None
    return torch.stack([o["lm loss"] for o in outputs]).sum(0)


def global_mean_loss(totals: torch.Tensor | None) -> tuple[float | None, int]:
    """(mean loss per token, tokens) over all data-parallel ranks; (None, 0) off the last pipeline stage."""
    from megatron.core import parallel_state as ps

    if totals is None:
        return None, 0
    # Sum over data-parallel ranks so every layout reports the same global loss.
    torch.distributed.all_reduce(totals, group=ps.get_data_parallel_group())
    return (totals[0] / totals[1].clamp(min=1)).item(), int(totals[1].item())
