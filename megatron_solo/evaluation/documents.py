"""Documents to score and their batches: the one token layout both backends see.

A document is token ids, a per-token *target* flag (token i is scored as the prediction made at
position i - 1, as the training loss mask does) and the patches of its image blocks, in the order of
its ``<vpatch>`` tokens. A batch right-pads documents to the longest with masked positions, so every
document is evaluated on its own, positions 0..n-1, attending only to itself (causal attention never
looks right, and padding is never a target).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from megatron_solo.vocab import PAD_ID


@dataclass
class Doc:
    """One document: ids [n], target flags [n] (bool) and patches [N, 3*P*P] (channel-major, float32)."""

    ids: np.ndarray
    target: np.ndarray
    patches: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self.target = np.asarray(self.target, dtype=bool)
        if self.ids.shape != self.target.shape or self.ids.ndim != 1:
            raise ValueError(f"ids {self.ids.shape} and target flags {self.target.shape} must be equal 1-D shapes")
        if len(self.target) and self.target[0]:
            raise ValueError("the first token cannot be a target: nothing predicts it")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_targets(self) -> int:
        """Number of scored tokens."""
        return int(self.target.sum())


def prompt_doc(ids: Sequence[int], patches: Sequence[torch.Tensor] | torch.Tensor | None = None) -> Doc:
    """A document without targets (a prompt to continue)."""
    return Doc(np.asarray(ids, np.int64), np.zeros(len(ids), bool), _cat(patches))


def continuation_doc(prefix: Sequence[int], continuation: Sequence[int],
                     patches: Sequence[torch.Tensor] | torch.Tensor | None = None) -> Doc:
    """``prefix`` + ``continuation`` with the continuation's tokens as the targets."""
    ids = np.concatenate([np.asarray(prefix, np.int64), np.asarray(continuation, np.int64)])
    target = np.zeros(len(ids), bool)
    target[len(prefix):] = True
    return Doc(ids, target, _cat(patches))


def _cat(patches) -> torch.Tensor | None:
    if patches is None or torch.is_tensor(patches):
        return patches
    patches = [p for p in patches if p is not None]
    return torch.cat(patches) if patches else None


@dataclass
class Batch:
    """B documents right-padded to S tokens (all tensors on the CPU)."""

    tokens: torch.Tensor  # [B, S] int64
    labels: torch.Tensor  # [B, S] int64: tokens shifted left (the last is padding)
    label_mask: torch.Tensor  # [B, S] bool: labels[b, i] is a target of document b
    position_ids: torch.Tensor  # [B, S] int64: 0..S-1 (documents start at 0 in their row)
    patches: torch.Tensor | None  # [N, 3*P*P] float32, batch-major in <vpatch> order
    num_patches: torch.Tensor  # [B] int64
    lengths: torch.Tensor  # [B] int64: real tokens per row

    @property
    def size(self) -> int:
        """Number of documents."""
        return self.tokens.shape[0]

    def as_dict(self) -> dict:
        """The fields by name (what the Megatron forward step reads)."""
        return {"tokens": self.tokens, "labels": self.labels, "label_mask": self.label_mask,
                "position_ids": self.position_ids, "patches": self.patches, "num_patches": self.num_patches,
                "lengths": self.lengths}


def collate(docs: Sequence[Doc], pad_id: int = PAD_ID) -> Batch:
    """Right-pad ``docs`` into one batch."""
    if not docs:
        raise ValueError("cannot collate an empty list of documents")
    width = max(len(d) for d in docs)
    tokens = torch.full((len(docs), width), pad_id, dtype=torch.long)
    target = torch.zeros(len(docs), width, dtype=torch.bool)
    for b, d in enumerate(docs):
        tokens[b, :len(d)] = torch.from_numpy(d.ids)
        target[b, :len(d)] = torch.from_numpy(d.target)
    labels = torch.full_like(tokens, pad_id)
    labels[:, :-1] = tokens[:, 1:]
    label_mask = torch.zeros_like(target)
    label_mask[:, :-1] = target[:, 1:]
    parts = [d.patches for d in docs if d.patches is not None and d.patches.shape[0]]
    return Batch(
        tokens=tokens, labels=labels, label_mask=label_mask,
        position_ids=torch.arange(width).expand(len(docs), width).contiguous(),
        patches=torch.cat(parts) if parts else None,
        num_patches=torch.tensor([0 if d.patches is None else d.patches.shape[0] for d in docs], dtype=torch.long),
        lengths=torch.tensor([len(d) for d in docs], dtype=torch.long),
    )


def plan_batches(lengths: Sequence[int], batch_tokens: int, max_batch: int, sort: bool = True) -> list[list[int]]:
    """Document indices grouped into batches of at most ``max_batch`` rows and ``batch_tokens`` padded tokens.

    ``sort``: longest first, so a batch holds documents of similar length (little padding); otherwise the
    given order is kept (documents that share an image stay together, so a decoded image is reused).
    A document longer than ``batch_tokens`` gets a batch of its own.
    """
    if batch_tokens < 1 or max_batch < 1:
        raise ValueError(f"batch_tokens and max_batch must be positive, got {batch_tokens}, {max_batch}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)) if sort else list(range(len(lengths)))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        new_width = max(width, int(lengths[i]))
        if current and (len(current) + 1 > max_batch or new_width * (len(current) + 1) > batch_tokens):
            batches.append(current)
            current, new_width = [], int(lengths[i])
        current.append(i)
        width = new_width
    if current:
        batches.append(current)
    return batches
