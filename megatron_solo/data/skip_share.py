"""Whole inputs that yield (almost) nothing are failures, not counted skips.

Every record carries the input it came from; a shard's stats count records and skips per input, and a
run sums them. An input whose every record was skipped, or more than ``max_skip_share`` of them, fails
the run in one line naming the file, the share and its commonest reason: a wrong ``--kind``, a wrong
column or an image root that does not match would otherwise write an empty dataset and exit 0.
"""

from __future__ import annotations

from collections import Counter

from megatron_solo.errors import UserInputError


class TooManySkips(UserInputError):
    """An input whose records were all, or more than the allowed share, skipped."""


def count_input(by_input: dict, name: str, reason: str | None) -> None:
    """Count one record of input ``name`` in ``by_input`` (skipped for ``reason``, or kept when None)."""
    entry = by_input.setdefault(name, {"records": 0, "skipped": {}})
    entry["records"] += 1
    if reason is not None:
        entry["skipped"][reason] = entry["skipped"].get(reason, 0) + 1


def add_inputs(total: dict, part: dict) -> None:
    """Add the per-input counts ``part`` to ``total`` (both {input: {"records", "skipped"}})."""
    for name, entry in part.items():
        mine = total.setdefault(name, {"records": 0, "skipped": {}})
        mine["records"] += entry["records"]
        mine["skipped"] = dict(Counter(mine["skipped"]) + Counter(entry["skipped"]))


def check_skip_share(by_input: dict, max_share: float) -> None:
    """Raise TooManySkips for the first input (in name order) over ``max_share``, or with every record skipped."""
    for name in sorted(by_input):
        records, skipped = by_input[name]["records"], by_input[name]["skipped"]
        lost = sum(skipped.values())
        if records == 0 or lost == 0:
            continue
        reason, count = Counter(skipped).most_common(1)[0]
        if lost == records:
            raise TooManySkips(f"{name}: every one of its {records} records was skipped (commonest reason: "
                               f"{reason}, {count}x); check --kind, the columns and the image root")
        if lost / records > max_share:
            raise TooManySkips(f"{name}: {lost} of its {records} records were skipped ({lost / records:.0%} > "
                               f"--max-skip-share {max_share:g}; commonest reason: {reason}, {count}x)")
