"""The deterministic held-out split of a raw source (``PreprocessConfig.holdout``).

Rule: every record that is a sample candidate (not a skip found while reading) has a position p in the
source's reading order and a 64-bit hash h(p) = splitmix64 of the state ``seed_state(seed ^ SALT, p)``
(the packer's generator, so ``packing.py``'s Python reference reproduces it). The held-out count is
N = holdout for holdout >= 1 (a count) or round(holdout x candidates) for 0 < holdout < 1 (a fraction:
exact, not a per-record threshold). When the records carry labels (classification) the N places are
shared among labels in proportion to their sizes (largest remainder; ties go to the label with the
smaller hash), so every class is represented as in the source; each label (or the whole source when
there are no labels) then gives its records with the smallest (hash, position). The choice depends only
on positions, labels and the seed: it is the same on every run, under resume and for any worker count.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from tqdm import tqdm

from megatron_solo.data.packing import GOLDEN, MASK64
from megatron_solo.errors import UserInputError

SALT = 0x686F6C646F7574  # "holdout": keeps these hashes apart from the packer's shuffles of the same seed
HELDOUT_DIR = "heldout"


def position_hashes(positions: np.ndarray, seed: int) -> np.ndarray:
    """h(p) for every position (uint64): first splitmix64 output of seed_state(seed ^ SALT, p), vectorized."""
    p = np.asarray(positions, dtype=np.uint64)
    base = np.uint64(((seed ^ SALT) & MASK64) * GOLDEN & MASK64)
    with np.errstate(over="ignore"):
        z = (base ^ ((p + np.uint64(1)) * np.uint64(0xD1B54A32D192ED03))) + np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def holdout_count(amount: float, candidates: int) -> int:
    """Records to hold out: `amount` itself when >= 1 (a count), else round(amount x candidates)."""
    if amount >= 1:
        if amount != int(amount):
            raise UserInputError(f"--holdout {amount:g}: a count must be a whole number (or a fraction below 1)")
        n = int(amount)
        if n > candidates:
            raise UserInputError(f"--holdout {n}: the source has only {candidates} records to hold out from")
    else:
        n = int(round(amount * candidates))
    if n == 0:
        raise UserInputError(f"--holdout {amount:g} holds out no record of {candidates}; give a count or a larger "
                             "fraction")
    if n >= candidates:
        raise UserInputError(f"--holdout {amount:g} holds out {n} of the source's {candidates} records and leaves "
                             "none to train on")
    return n


def _quotas(total: int, sizes: np.ndarray, tie_hash: np.ndarray) -> np.ndarray:
    """Share `total` among strata in proportion to `sizes` (largest remainder, exact integer arithmetic)."""
    n = int(sizes.sum())
    quota = total * sizes // n
    remainder = total * sizes % n
    extra = total - int(quota.sum())
    order = np.lexsort((tie_hash, -remainder))  # largest remainder first, then the smaller hash
    quota[order[:extra]] += 1
    return quota


def choose(positions: np.ndarray, strata: np.ndarray, amount: float, seed: int) -> np.ndarray:
    """Sorted positions held out from the candidate `positions` (with their stratum numbers), by the rule above."""
    positions = np.asarray(positions, np.int64)
    strata = np.asarray(strata, np.int64)
    total = holdout_count(amount, len(positions))
    if total == 0 or len(positions) == 0:
        return np.zeros(0, np.int64)
    sizes = np.bincount(strata)
    quota = _quotas(total, sizes, position_hashes(np.arange(len(sizes)), seed + 1))
    h = position_hashes(positions, seed)
    order = np.lexsort((positions, h, strata))  # by stratum, then hash, then position
    rank = np.arange(len(order)) - np.repeat(np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    return np.sort(positions[order[rank < quota[strata[order]]]])


def plan_holdout(records: Iterable[dict], amount: float, seed: int, progress: bool = True
                 ) -> tuple[np.ndarray, dict]:
    """(held-out mask over all record positions, summary) from one pass over the source's records."""
    positions, labels = [], []
    n = 0
    for n, record in enumerate(tqdm(records, unit="rec", desc="holdout scan", disable=not progress), 1):
        if "skip" not in record:
            positions.append(n - 1)
            labels.append(record.get("label"))
    stratified = any(label is not None for label in labels)
    names = sorted({str(label) for label in labels}) if stratified else [""]
    number = {name: i for i, name in enumerate(names)}
    strata = np.array([number[str(label)] if stratified else 0 for label in labels], np.int64)
    held = choose(np.array(positions, np.int64), strata, amount, seed)
    mask = np.zeros(n, bool)
    mask[held] = True
    summary = {"requested": amount, "records": int(len(held)), "candidates": len(positions), "seed": seed,
               "stratified_by_label": stratified,
               "rule": "smallest splitmix64 hashes of record positions (per label when labelled)"}
    return mask, summary
