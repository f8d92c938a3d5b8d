"""Validate a SOLO batch before it reaches megatron-core, naming the offending sample."""

from __future__ import annotations

import torch


def check_batch(
    input_ids: torch.Tensor,
    position_ids: torch.Tensor | None,
    patches: torch.Tensor | None,
    *,
    vpatch_id: int,
    patch_dim: int,
    vocab_size: int,
    max_positions: int,
    num_patches: torch.Tensor | None = None,
) -> None:
    """Raise ValueError (naming sample and field) on a batch the model cannot use correctly."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    batch, seq = input_ids.shape
    bad = (input_ids < 0) | (input_ids >= vocab_size)
    if bad.any():
        b, s = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"sample {b}: token id {int(input_ids[b, s])} at position {s} is outside the vocabulary ({vocab_size})")
    if position_ids is not None:
        if position_ids.shape != input_ids.shape:
            raise ValueError(f"position_ids shape {tuple(position_ids.shape)} != input_ids shape {tuple(input_ids.shape)}")
        limit = min(seq, max_positions)
        bad = (position_ids < 0) | (position_ids >= limit)
        if bad.any():
            b, s = (int(x) for x in bad.nonzero()[0])
            raise ValueError(
                f"sample {b}: position_ids[{s}] = {int(position_ids[b, s])} is past the sequence "
                f"(valid 0..{limit - 1})"
            )
    if patches is not None and (patches.dim() != 2 or patches.shape[1] != patch_dim):
        raise ValueError(f"patches must be [num_patches, {patch_dim}], got shape {tuple(patches.shape)}")
    per_sample = (input_ids == vpatch_id).sum(dim=1)
    given = 0 if patches is None else patches.shape[0]
    if num_patches is not None:
        for b in range(batch):
            if int(per_sample[b]) != int(num_patches[b]):
                raise ValueError(
                    f"sample {b}: {int(per_sample[b])} <vpatch> tokens but {int(num_patches[b])} patches"
                )
    if int(per_sample.sum()) != given:
        counts = ", ".join(f"sample {b}: {int(n)}" for b, n in enumerate(per_sample))
        raise ValueError(f"batch has {int(per_sample.sum())} <vpatch> tokens ({counts}) but {given} patches")
