"""What the packer drops or splits, per dataset of the blend, and the refusal when too much is lost.

The packer never truncates: a sample longer than seq_length is split outside its image blocks, or
dropped when that is impossible (an image block longer than seq_length) or when the policy is "drop".
Dropping is silent data loss at the scale of a run (images preprocessed at --max-side 1024 and trained
at --seq-length 1024 lose every large image), so the dataset reports it per source and refuses a run
that would lose more than ``DataConfig.max_drop_share`` of a source's tokens.
"""

from __future__ import annotations

import numpy as np

from megatron_solo.config.data import DatasetSource
from megatron_solo.data.packing import PackResult
from megatron_solo.errors import UserInputError
from megatron_solo.vocab import image_token_count


class DataLossError(UserInputError):
    """The packer would drop more of a dataset than the data config allows; names source, share and fix."""


def source_labels(sources: list[DatasetSource]) -> list[str]:
    """One distinct report key per dataset: its name, or its path; repeats get '#k' (their blend position)."""
    labels: list[str] = []
    for k, source in enumerate(sources):
        label = source.label()
        labels.append(f"{label}#{k}" if label in labels else label)
    return labels


def _largest_blocks(ids: np.ndarray, block_ptr: np.ndarray, block_start: np.ndarray,
                    block_end: np.ndarray) -> np.ndarray:
    """Per sample id: tokens of its largest image block (0 without images)."""
    counts = block_ptr[ids + 1] - block_ptr[ids]
    out = np.zeros(len(ids), np.int64)
    has = counts > 0
    if not has.any():
        return out
    ptr = np.concatenate([[0], np.cumsum(counts[has])])
    which = np.repeat(block_ptr[ids[has]], counts[has]) + (np.arange(ptr[-1]) - np.repeat(ptr[:-1], counts[has]))
    out[has] = np.maximum.reduceat(block_end[which] - block_start[which], ptr[:-1])
    return out


def largest_fitting_side(seq_length: int, patch: int) -> int:
    """Largest --max-side (a multiple of `patch`) whose biggest image block, a square grid, fits seq_length."""
    n = 0
    while image_token_count(n + 1, n + 1) <= seq_length:
        n += 1
    return n * patch


def _reason(entry: dict, seq_length: int, patch: int, overflow: str) -> str:
    """Why a source loses samples and how to stop it, in one clause."""
    block, longest = entry["largest_dropped_image_block"], entry["longest_dropped_sample"]
    side = largest_fitting_side(seq_length, patch)
    smaller = f"preprocess with --max-side {side} or less, " if side else ""
    if overflow == "drop":
        also = (f" (its image blocks of up to {block} tokens are dropped under 'split' too: {smaller[:-2]})"
                if block > seq_length and smaller else "")
        return (f"samples of up to {longest} tokens are longer than seq_length {seq_length} and overflow='drop' "
                f"discards them; set overflow='split' (cuts outside images), raise --seq-length to at least "
                f"{longest}, or raise max_drop_share to accept the loss{also}")
    return (f"image blocks of up to {block} tokens do not fit seq_length {seq_length} and are never cut; "
            f"{smaller}raise --seq-length to at least {block}, or raise max_drop_share to accept the loss")


def overflow_report(packs: PackResult, dataset: np.ndarray, stream: np.ndarray, lengths: np.ndarray,
                    blocks: tuple[np.ndarray, np.ndarray, np.ndarray], labels: list[str], patch: int,
                    overflow: str) -> dict[str, dict]:
    """Per dataset label: samples and tokens drawn, dropped and split in one epoch's packing.

    ``dataset``/``stream``: per stream position, its dataset number and its id in ``lengths`` and the
    ``blocks`` CSR arrays (all datasets concatenated); the packer's item and drop ids are stream positions.
    """
    n = len(labels)
    drawn_len = lengths[stream]
    dropped = np.asarray(packs.dropped, np.int64)
    split = np.unique(packs.item_sample[packs.item_start > 0])  # a later piece starts past token 0
    largest = _largest_blocks(stream[dropped], *blocks)
    count = lambda pos, weights=None: np.bincount(dataset[pos], weights, minlength=n)  # noqa: E731
    every = np.arange(len(stream))
    drawn, drawn_tokens = count(every), count(every, drawn_len)
    lost, lost_tokens, cut = count(dropped), count(dropped, drawn_len[dropped]), count(split)
    longest = np.zeros(n, np.int64)
    block = np.zeros(n, np.int64)
    np.maximum.at(longest, dataset[dropped], drawn_len[dropped])
    np.maximum.at(block, dataset[dropped], largest)
    report = {}
    for d, label in enumerate(labels):
        entry = {"samples_drawn": int(drawn[d]), "samples_dropped": int(lost[d]), "samples_split": int(cut[d]),
                 "tokens_drawn": int(drawn_tokens[d]), "tokens_dropped": int(lost_tokens[d]),
                 "drop_share": float(lost_tokens[d] / drawn_tokens[d]) if drawn_tokens[d] else 0.0,
                 "longest_dropped_sample": int(longest[d]), "largest_dropped_image_block": int(block[d])}
        entry["reason"] = _reason(entry, packs.seq_length, patch, overflow) if lost[d] else ""
        report[label] = entry
    return report


def format_overflow_report(report: dict[str, dict]) -> list[str]:
    """One line per dataset, for the start-up log."""
    lines = []
    for label, r in report.items():
        lines.append(f"{label}: {r['samples_drawn']} samples / {r['tokens_drawn']} tokens drawn, "
                     f"{r['samples_split']} split, {r['samples_dropped']} dropped ({r['tokens_dropped']} tokens, "
                     f"{r['drop_share']:.2%})")
    return lines


def refusal(report: dict[str, dict], max_drop_share: float, epoch: int) -> DataLossError | None:
    """The DataLossError for the sources losing more than ``max_drop_share`` of their tokens, or None."""
    over = [(label, r) for label, r in report.items() if r["drop_share"] > max_drop_share]
    if not over:
        return None
    parts = [f"{label}: the packer drops {r['drop_share']:.1%} of its tokens in epoch {epoch} "
             f"({r['samples_dropped']} of {r['samples_drawn']} samples, {r['tokens_dropped']} of "
             f"{r['tokens_drawn']} tokens), more than max_drop_share {max_drop_share:g}: {r['reason']}"
             for label, r in over]
    return DataLossError("; ".join(parts))
