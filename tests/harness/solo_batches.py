"""Synthetic SOLO packs (text + image blocks, several documents) for model tests."""

from __future__ import annotations

import torch

from megatron_solo.config import model_preset

VOCAB = 256
VISION, VPATCH, VROW_SEP, VISION_END = 250, 251, 252, 253
PATCH_DIM = 3072


def tiny_solo_config(**overrides):
    """solo-tiny with a small vocabulary whose top ids are the vision tokens."""
    return model_preset(
        "solo-tiny", vocab_size=VOCAB, vpatch_token_id=VPATCH, first_special_id=VISION, **overrides
    )


def image_block(rows: int, cols: int) -> list[int]:
    """SOLO's token layout of one image."""
    out = [VISION]
    for r in range(rows):
        out += [VPATCH] * cols
        if r < rows - 1:
            out.append(VROW_SEP)
    return out + [VISION_END]


def document(g: torch.Generator, with_image: bool) -> tuple[list[int], int]:
    """(token ids, number of patches) of one random document."""
    text = lambda n: torch.randint(1, VISION, (n,), generator=g).tolist()  # noqa: E731
    ids = text(int(torch.randint(2, 5, (1,), generator=g)))
    patches = 0
    if with_image:
        rows, cols = (int(x) for x in torch.randint(1, 3, (2,), generator=g))
        ids += image_block(rows, cols)
        patches = rows * cols
    ids += text(int(torch.randint(2, 6, (1,), generator=g)))
    return ids, patches


def pack(g: torch.Generator, seq: int, docs: list[tuple[list[int], int]] | None = None) -> dict:
    """One pack of ``seq`` tokens: documents back to back, positions restarting, padding as a last doc."""
    if docs is None:
        docs = [document(g, with_image=i % 2 == 0) for i in range(3)]
    tokens, positions, bounds, npatch = [], [], [0], 0
    for ids, n in docs:
        ids = ids[: seq - len(tokens)]
        tokens += ids
        positions += list(range(len(ids)))
        bounds.append(len(tokens))
        npatch += n
    if len(tokens) < seq:
        pad = seq - len(tokens)
        tokens += [0] * pad
        positions += list(range(pad))
        bounds.append(seq)
    t = torch.tensor(tokens)
    labels = torch.cat([t[1:], t.new_zeros(1)])
    loss_mask = (labels < VISION).float() * (t < VISION).float()
    for b in bounds[1:]:
        loss_mask[b - 1] = 0.0  # no loss across a document boundary
    if bounds[-1] == seq and len(docs) < len(bounds) - 1:
        loss_mask[bounds[-2]:] = 0.0  # padding
    patches = torch.randn(int((t == VPATCH).sum()), PATCH_DIM, generator=g)
    return dict(
        tokens=t[None], labels=labels[None], loss_mask=loss_mask[None],
        position_ids=torch.tensor(positions)[None], patches=patches,
        cu_seqlens=torch.tensor(bounds, dtype=torch.int32), num_patches=torch.tensor([patches.shape[0]]),
    )
