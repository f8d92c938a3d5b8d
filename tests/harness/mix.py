"""A realistic SOLO image/text mix as packed sequences (no data files needed): the GPU checks in
tests/gpu/ and the timings in benchmarks/ train and compare on it."""

from __future__ import annotations

import torch

from megatron_solo.vocab import VISION_END_ID, VISION_START_ID, VPATCH_ID, VROW_SEP_ID

# Patch grids of ImageNet-like images after the SOLO resize rule (rows, cols):
# e.g. 500x375 -> 512x384 = 12 rows x 16 cols; 1024-wide photos -> 32 columns.
GRIDS = [(12, 16), (16, 12), (11, 16), (16, 16), (10, 16), (24, 32), (18, 24), (15, 32)]


def image_tokens(rows: int, cols: int) -> list[int]:
    """``<vision>`` rows of ``<vpatch>`` separated by ``<vrow_sep>``, ``</vision>``."""
    out = [VISION_START_ID]
    for r in range(rows):
        out += [VPATCH_ID] * cols + ([VROW_SEP_ID] if r < rows - 1 else [])
    return out + [VISION_END_ID]


MEAN_IMAGE = sum(r * c + r + 1 for r, c in GRIDS) / len(GRIDS)  # vision tokens of one image
MEAN_CAPTION = 17  # <s>, caption, </s>
MEAN_TEXT_DOC = 2100


def make_pack(seq: int, g: torch.Generator, vision_share: float = 0.33) -> dict:
    """One pack: image-caption documents and long text documents, positions restarting per document.

    ``vision_share`` is the expected share of image tokens (SOLO stage 1: 32.7%).
    """
    # share = p*I / (p*(I+c) + (1-p)*T), solved for p, the chance of an image document.
    i, c, t = MEAN_IMAGE, MEAN_CAPTION, MEAN_TEXT_DOC
    p_image = vision_share * t / (i - vision_share * (i + c) + vision_share * t)
    tokens: list[int] = []
    bounds = [0]
    while len(tokens) < seq:
        if torch.rand(1, generator=g).item() < p_image:
            rows, cols = GRIDS[int(torch.randint(len(GRIDS), (1,), generator=g))]
            caption = torch.randint(100, 32000, (int(torch.randint(6, 24, (1,), generator=g)),), generator=g)
            doc = [1, *image_tokens(rows, cols), *caption.tolist(), 2]
        else:
            n = int(torch.randint(200, 4000, (1,), generator=g))
            doc = [1, *torch.randint(100, 32000, (n,), generator=g).tolist(), 2]
        doc = doc[: seq - len(tokens)]
        tokens += doc
        bounds.append(len(tokens))
    t = torch.tensor(tokens)
    positions = torch.cat([torch.arange(b - a) for a, b in zip(bounds[:-1], bounds[1:])])
    labels = torch.cat([t[1:], t.new_zeros(1)])
    loss_mask = ((t < VISION_START_ID) & (labels < VISION_START_ID)).float()
    loss_mask[torch.tensor(bounds[1:]) - 1] = 0
    n_patch = int((t == VPATCH_ID).sum())
    return dict(
        tokens=t[None], labels=labels[None], loss_mask=loss_mask[None], position_ids=positions[None],
        patches=torch.randn(n_patch, 3072, generator=g), cu_seqlens=torch.tensor(bounds, dtype=torch.int32),
    )


def attention_keys(cu_seqlens: torch.Tensor, window: int | None) -> int:
    """Sum over query tokens of the keys each attends to (causal, per document, sliding window)."""
    total = 0
    for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        d = b - a
        if window is None or d <= window:
            total += d * (d + 1) // 2
        else:
            total += window * (window + 1) // 2 + (d - window) * window
    return total


def micro_batch(packs: list[dict]) -> dict:
    """Packs from :func:`make_pack` (or :func:`learnable_pack`) collated as the data loader does ([B, S], cu over B*S)."""
    from megatron_solo.data.dataset import collate_packs

    rows = [{k: (v[0] if v.dim() == 2 and k != "patches" else v) for k, v in p.items()} for p in packs]
    for row in rows:
        row["num_patches"] = torch.tensor(row["patches"].shape[0])
    return collate_packs(rows)


def learnable_pack(seq: int, g: torch.Generator, vision_share: float = 0.2) -> dict:
    """:func:`make_pack` whose text a model can learn: each text token follows from the one before
    (``next = (7 * prev + 3) mod 1000 + 100``) with probability 0.7, else is random.

    Random text leaves nothing to learn but the unigram distribution, so a loss curve on it cannot
    tell a good FP8 recipe from a bad one; this one falls from ~10.4 towards ~3.7 nats.
    """
    pack = make_pack(seq, g, vision_share)
    ids = pack["tokens"][0].tolist()
    keep = (torch.rand(seq, generator=g) < 0.7).tolist()
    for i in range(1, seq):  # a chain: each token depends on the one just rewritten
        if keep[i] and 100 <= ids[i] < VISION_START_ID and 100 <= ids[i - 1] < VISION_START_ID:
            ids[i] = (7 * ids[i - 1] + 3) % 1000 + 100
    pack["tokens"][0] = torch.tensor(ids)
    pack["labels"][0, :-1] = pack["tokens"][0, 1:]
    return pack
