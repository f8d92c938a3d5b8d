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
    rewound: bool = False  # the step was undone: the run went back to its last checkpoint (spike policy)


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
    outputs = forward_backward(forward_step, data_iterators, chunks, optimizer, num_microbatches=num_microbatches,
                               seq_length=seq_length, micro_batch_size=micro_batch_size,
                               before_grad_sync=before_grad_sync)
    found_inf, grad_norm = gradient_norm(optimizer)
    ok = not found_inf and apply_update(optimizer, scheduler, grad_norm)
    loss, num_tokens = global_mean_loss(loss_totals(outputs))
    return StepResult(loss=loss, num_tokens=num_tokens, grad_norm=grad_norm, skipped=not ok)


def forward_backward(forward_step: Callable, data_iterators: list[Iterator], chunks: list[torch.nn.Module],
                     optimizer, *, num_microbatches: int, seq_length: int, micro_batch_size: int,
                     before_grad_sync: Callable[[], None] | None = None) -> list[dict]:
    """megatron-core's forward-backward schedule over one step's micro-batches; their outputs (last stage)."""
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    for chunk in chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    config = chunks[0].config
    config.finalize_model_grads_func = _after(before_grad_sync, finalize_model_grads)
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = [c.no_sync for c in chunks] if len(chunks) > 1 else chunks[0].no_sync
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=data_iterators if len(chunks) > 1 else data_iterators[0],
        model=chunks if len(chunks) > 1 else chunks[0],
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=False,
    )


def _after(first: Callable[[], None] | None, finalize: Callable) -> Callable:
    """``finalize`` (the schedule's grad-reduction hook), calling ``first`` as it is entered."""
    if first is None:
        return finalize

    def finalize_after(*args, **kwargs):
        first()
        return finalize(*args, **kwargs)

    return finalize_after


def gradient_norm(optimizer) -> tuple[bool, float | None]:
    """(found inf, global gradient norm) of the gradients ready for the update, none applied yet.

    megatron-core's ``optimizer.step()`` computes the norm and applies the update in one call; its parts
    are called here so the guard can look at the norm in between.
    """
    if optimizer.prepare_grads():  # a loss scaler's overflow check (fp16)
        return True, None
    return False, optimizer.get_grad_norm()


def apply_update(optimizer, scheduler, grad_norm: float | None) -> bool:
    """Clip to the global ``grad_norm`` and step the optimizer and the schedule (megatron-core's step, its rest)."""
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        params = opt.get_parameters()
        if getattr(opt, "is_stub_optimizer", False) or not params or opt.config.clip_grad <= 0.0:
            continue
        clip_grad_by_total_norm_fp32(params, max_norm=opt.config.clip_grad, total_norm=grad_norm,
                                     use_decoupled_grad=opt.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)
    ok = optimizer.step_with_ready_grads()
    if ok:
        scheduler.step(increment=1)
    return ok


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
