"""One optimizer step, the one every run takes: megatron-core's forward-backward schedule, the
non-finite guard's agreed check, then the update as the caller's verdict allows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from megatron_solo.training.guard import DivergenceError, StepCheck, check_step


@dataclass
class StepResult:
    """What one training step reports, the same on every rank."""

    loss: float | None  # the global mean loss per token (None: no loss tokens in the step)
    num_tokens: int
    grad_norm: float | None
    skipped: bool
    rewound: bool = False  # the step was undone: the run went back to its last checkpoint (spike policy)


def stop_on_nonfinite(check: StepCheck) -> str:
    """The guard's default verdict: apply a finite step's update; a non-finite step stops the run."""
    if not check.finite:
        raise DivergenceError(f"not finite: {check.describe()}; the update was not applied")
    return "apply"


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
    verdict: Callable[[StepCheck], str] = stop_on_nonfinite,
) -> StepResult:
    """Forward/backward over ``num_microbatches`` micro-batches, the guard's check, then the update.

    Every rank agrees on the step's :class:`StepCheck` (loss, gradient norm, non-finite micro-batches)
    before ``verdict`` decides: ``"apply"`` the update, ``"skip"`` it, or ``"rewound"`` (the caller went
    back to a checkpoint instead). ``before_grad_sync`` is called as the gradient reduction across
    data-parallel ranks begins.
    """
    outputs = forward_backward(forward_step, data_iterators, chunks, optimizer, num_microbatches=num_microbatches,
                               seq_length=seq_length, micro_batch_size=micro_batch_size,
                               before_grad_sync=before_grad_sync)
    found_inf, grad_norm = gradient_norm(optimizer)
    totals = loss_totals(outputs)
    loss, num_tokens = global_mean_loss(totals)
    check = check_step(None if totals is None else [o["lm loss"] for o in outputs], loss, grad_norm)
    decided = verdict(check)
    applied = decided == "apply" and not found_inf and apply_update(optimizer, scheduler, grad_norm)
    return StepResult(loss=check.loss, num_tokens=num_tokens, grad_norm=check.grad_norm, skipped=not applied,
                      rewound=decided == "rewound")


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
