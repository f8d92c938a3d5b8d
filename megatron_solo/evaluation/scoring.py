"""The scoring core: per-document summed log-probabilities of target tokens, and greedy continuations.

Both backends (:mod:`.megatron_backend`, :mod:`.hf_backend`) get the same batches from
:func:`megatron_solo.evaluation.documents.collate` and return the log-probability of every target label
(``batch.label_mask`` positions, row-major), computed over the model's true vocabulary. The core plans
batches from document lengths alone and loads each document only when its batch runs (held-out sets do
not fit in memory as float patches); under data parallelism each rank runs every ``dp``-th batch and the
results are gathered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from tqdm import tqdm

from megatron_solo.evaluation.documents import Batch, Doc, collate, plan_batches


class Backend(Protocol):
    """What the core needs of a model (see the two implementations)."""

    tokenizer: object  # megatron_solo.vocab.Tokenizer
    processor: object  # megatron_solo.hf.processor.SoloProcessor (SOLO's image rule and prompt layouts)
    template: str  # the model's prompt template: "plain" or "chat"
    pad_id: int
    max_positions: int
    data_parallel_rank: int
    data_parallel_size: int
    is_main: bool  # the process that prints and writes the report

    def target_logprobs(self, batch: Batch) -> torch.Tensor | None:
        """log p(label) at each ``batch.label_mask`` position (row-major, float32); None where not computed."""

    def greedy(self, docs: Sequence[Doc], max_new_tokens: int, eos_id: int) -> list[list[int]] | None:
        """Greedy continuation of each prompt, without its closing eos; None where not computed."""

    def gather(self, local: dict[int, object]) -> dict[int, object]:
        """The union over all ranks of the per-document results each computed."""


def row_sums(logprobs: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
    """Per-row sum (float64) of target log-probs given in row-major ``label_mask`` order."""
    rows = label_mask.nonzero()[:, 0].to(logprobs.device)
    out = torch.zeros(label_mask.shape[0], dtype=torch.float64, device=logprobs.device)
    return out.index_add_(0, rows, logprobs.double()).cpu()


def _my_batches(backend: Backend, batches: list[list[int]]) -> list[list[int]]:
    return batches[backend.data_parallel_rank::backend.data_parallel_size]


def _bar(backend: Backend, total: int, desc: str, progress: bool):
    return tqdm(total=total, desc=desc, unit="doc", disable=not (progress and backend.is_main), leave=False)


def check_lengths(lengths: Sequence[int], limit: int, what: str) -> None:
    """Refuse documents the model cannot position (longer than its max_position_embeddings)."""
    too_long = [i for i, n in enumerate(lengths) if n > limit]
    if too_long:
        from megatron_solo.evaluation.errors import EvaluationError

        i = too_long[0]
        raise EvaluationError(f"{what}: {len(too_long)} document(s) exceed the model's {limit} positions "
                              f"(the first, #{i}, has {lengths[i]} tokens); use smaller images (--max-side)")


def score_documents(backend: Backend, lengths: Sequence[int], load: Callable[[int], Doc], *,
                    batch_tokens: int, max_batch: int, sort: bool = True, desc: str = "score",
                    progress: bool = True) -> list[tuple[float, int]]:
    """(summed target log-probability, number of targets) of every document.

    ``load(i)`` builds document i, of at most ``lengths[i]`` tokens.
    """
    check_lengths(lengths, backend.max_positions, desc)
    batches = _my_batches(backend, plan_batches(lengths, batch_tokens, max_batch, sort))
    local: dict[int, object] = {}
    with _bar(backend, sum(map(len, batches)), desc, progress) as bar:
        for idx in batches:
            batch = collate([load(i) for i in idx], backend.pad_id)
            logprobs = backend.target_logprobs(batch)
            if logprobs is not None:
                counts = batch.label_mask.sum(dim=1).tolist()
                local.update(zip(idx, zip(row_sums(logprobs, batch.label_mask).tolist(), counts)))
            bar.update(len(idx))
    found = backend.gather(local)
    return [(float(found[i][0]), int(found[i][1])) for i in range(len(lengths))]


def generate_documents(backend: Backend, lengths: Sequence[int], load: Callable[[int], Doc], max_new_tokens: int,
                       eos_id: int, *, batch_tokens: int, max_batch: int, desc: str = "generate",
                       progress: bool = True) -> list[list[int]]:
    """Greedy continuation (at most ``max_new_tokens``, stopping at ``eos_id``) of every prompt document."""
    room = backend.max_positions - max_new_tokens
    check_lengths(lengths, max(room, 0), f"{desc} (prompt + {max_new_tokens} new tokens)")
    widths = [n + max_new_tokens for n in lengths]
    batches = _my_batches(backend, plan_batches(widths, batch_tokens, max_batch, sort=True))
    local: dict[int, object] = {}
    with _bar(backend, sum(map(len, batches)), desc, progress) as bar:
        for idx in batches:
            out = backend.greedy([load(i) for i in idx], max_new_tokens, eos_id)
            if out is not None:
                local.update(zip(idx, out))
            bar.update(len(idx))
    found = backend.gather(local)
    return [list(found[i]) for i in range(len(lengths))]


def strip_eos(tokens: Sequence[int], eos_id: int) -> list[int]:
    """Tokens before the first ``eos_id``."""
    tokens = [int(t) for t in tokens]
    return tokens[:tokens.index(eos_id)] if eos_id in tokens else tokens
