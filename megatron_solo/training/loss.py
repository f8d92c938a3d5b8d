"""Masked next-token loss in the form megatron-core's schedules reduce."""

from __future__ import annotations

import torch


def masked_token_loss(
    loss_mask: torch.Tensor, output_tensor: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(sum of masked token losses, number of loss tokens, logging dict) for one micro-batch.

    ``output_tensor`` is the per-token cross-entropy GPTModel returns when given labels.
    With ``calculate_per_token_loss`` the schedule sums these over micro-batches and
    data-parallel ranks and divides the gradients by the total token count, so the
    result does not depend on how the global batch is split.
    """
    losses = output_tensor.float().reshape(-1)
    mask = loss_mask.float().reshape(-1)
    if mask.shape != losses.shape:
        raise ValueError(f"loss_mask has {mask.numel()} entries but the model produced {losses.numel()} losses")
    loss_sum = torch.sum(losses * mask)
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach(), num_tokens.detach().float()])
    return loss_sum, num_tokens, {"lm loss": report}
