"""The forward_step_func megatron-core's schedules call for SOLO batches."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch

from megatron_solo.training.loss import masked_token_loss

BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids")


def packed_seq_params(cu_seqlens: torch.Tensor | None, seq: int, thd: bool, on_device: torch.Tensor | None = None):
    """PackedSeqParams for document boundaries over the flattened batch (None: one doc per row).

    The longest document is read from ``cu_seqlens``; give them on the host and their copy on the model's
    device as ``on_device``, so that reading it does not wait for the GPU.
    """
    if cu_seqlens is None:
        return None
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = cu_seqlens.to(torch.int32)
    max_len = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else seq
    if on_device is not None:
        cu = on_device.to(torch.int32)
    return PackedSeqParams(
        qkv_format="thd" if thd else "sbhd",
        cu_seqlens_q=cu,
        cu_seqlens_kv=cu,
        max_seqlen_q=max_len,
        max_seqlen_kv=max_len,
    )


def to_device(batch: dict, device: torch.device) -> dict:
    """Move every tensor of a batch to ``device`` (non-blocking from pinned memory)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def solo_forward_step(data_iterator: Iterator, model):
    """Read one micro-batch, run SoloModel, return (per-token losses, loss function).

    What the model would read of the batch on the host (its checks, the longest document, where the
    patches go) is read here before the batch is copied, so the GPU's queue never waits on it.
    """
    from megatron_solo.model.chunks import unwrap
    from megatron_solo.platform.distributed import current_device

    host = dict(next(data_iterator))  # the step may run the same micro-batch again (a rewind, each chunk)
    missing = [k for k in BATCH_KEYS if k not in host]
    if missing:
        raise ValueError(f"batch is missing field(s) {missing}")
    chunk = unwrap(model)
    thd = getattr(chunk, "packed_format", "sbhd") == "thd"
    if chunk.pre_process:
        chunk.check_inputs(host["tokens"], host["position_ids"], host.get("patches"), host.get("num_patches"),
                           host.get("cu_seqlens"))
        host["patch_positions"] = chunk.patch_positions(host["tokens"])
    batch = to_device(host, current_device())
    params = packed_seq_params(host.get("cu_seqlens"), host["tokens"].shape[1], thd, batch.get("cu_seqlens"))
    output = model(
        batch["tokens"],
        batch["position_ids"],
        None,
        labels=batch["labels"],
        patches=batch.get("patches"),
        packed_seq_params=params,
        patch_positions=batch.get("patch_positions"),
        checked=True,
    )
    return output, functools.partial(masked_token_loss, batch["loss_mask"])


def text_forward_step(data_iterator: Iterator, model):
    """forward_step_func for a plain GPTModel on text batches (platform tests, benchmarks)."""
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return output, functools.partial(masked_token_loss, batch["loss_mask"])
