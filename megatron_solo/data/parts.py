"""One preprocessing job split into N parts (a Slurm job array): which shards a part owns, and its marker.

Records are cut into shards in reading order whatever the split (``preprocess._chunks``), and part I of N
builds the shards k with k % N == I, in the training folder and in the held-out folder alike. So the
parts' shards are exactly a one-process run's shards, under the same names: disjoint across parts, every
record in exactly one, the held-out split (chosen from the whole source by every part) the same. A part
that finished leaves ``OUTPUT/parts/part-I-of-N.json`` (its stats); a rerun of it does nothing, and a
rerun of an interrupted part redoes only its own missing shards. When every part's marker is there, the
folder is one dataset and ``stats.json`` sums all its shards.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from megatron_solo.errors import UserInputError

PARTS_DIR = "parts"
_MARKER = re.compile(r"part-(\d+)-of-(\d+)\.json")


@dataclass(frozen=True)
class Part:
    """Part ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def owns(self, shard: int) -> bool:
        """Whether shard number ``shard`` (of either folder) is this part's to build."""
        return shard % self.count == self.index

    def marker(self, output: str | os.PathLike) -> Path:
        """The file that says this part finished."""
        return Path(output) / PARTS_DIR / f"part-{self.index:03d}-of-{self.count:03d}.json"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_part(text: str) -> Part:
    """``I/N`` (0 <= I < N) -> Part; UserInputError naming the spelling otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise UserInputError(f"--part {text!r}: expected I/N, e.g. 0/3 (part I of N, counted from 0)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise UserInputError(f"--part {text}: needs N >= 1 and 0 <= I < N (parts are counted from 0)")
    return Part(index, count)


def part_from_env(environ: Mapping[str, str]) -> Part | None:
    """The part of a Slurm array task (SLURM_ARRAY_TASK_ID / _COUNT / _MIN / _MAX), or None outside one."""
    if "SLURM_ARRAY_TASK_ID" not in environ or "SLURM_ARRAY_TASK_COUNT" not in environ:
        return None
    task, count = _array_number(environ, "SLURM_ARRAY_TASK_ID"), _array_number(environ, "SLURM_ARRAY_TASK_COUNT")
    low = _array_number(environ, "SLURM_ARRAY_TASK_MIN", 0)
    high = _array_number(environ, "SLURM_ARRAY_TASK_MAX", low + count - 1)
    if count < 1:
        raise UserInputError(f"SLURM_ARRAY_TASK_COUNT={count}: a Slurm array has at least one task")
    if high - low + 1 != count:  # --array=0-10:2 or 1,5,9: the task ids do not number the parts
        raise UserInputError(f"Slurm array ids {low}..{high} are not {count} consecutive numbers; submit "
                             f"--array={low}-{low + count - 1} or pass --part I/N")
    if not low <= task <= high:
        raise UserInputError(f"SLURM_ARRAY_TASK_ID={task} is outside the array's ids {low}..{high}")
    return Part(task - low, count)


def _array_number(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    """A Slurm array variable as a number, its default when unset; UserInputError naming it when not one."""
    text = environ.get(name)
    if text is None and default is not None:
        return default
    if text is None or not text.strip().isdigit():
        raise UserInputError(f"{name}={text!r}: expected a whole number, as Slurm sets it for an array task "
                             "(or pass --part I/N)")
    return int(text)


def resolve_part(text: str | None, environ: Mapping[str, str]) -> Part | None:
    """The part this run is: ``--part`` when given, else the Slurm array task's, else None (the whole job)."""
    if text:
        return parse_part(text)
    return part_from_env(environ)


def finished_parts(output: str | os.PathLike) -> dict[Part, dict]:
    """The parts whose marker is in ``output``, with the stats each recorded."""
    folder = Path(output) / PARTS_DIR
    found = {}
    for path in sorted(folder.glob("part-*-of-*.json")) if folder.is_dir() else []:
        match = _MARKER.fullmatch(path.name)
        if match:
            found[Part(int(match.group(1)), int(match.group(2)))] = json.loads(path.read_text())
    return found


def check_split(output: str | os.PathLike, count: int | None) -> None:
    """Refuse a part of N parts (None: a whole run) over a folder whose parts were of another count."""
    counts = {p.count for p in finished_parts(output)}
    others = counts - {count}
    if others:
        what = f"as {count} parts" if count else "in one process"
        raise UserInputError(f"{output} holds parts of a {'/'.join(map(str, sorted(others)))}-part split; "
                             f"it cannot be continued {what}: use the same N or another output folder")


def missing_parts(output: str | os.PathLike) -> tuple[int, list[int]]:
    """(N, the parts of N not finished) of a folder written as parts; (0, []) for one written whole."""
    done = finished_parts(output)
    if not done:
        return 0, []
    count = next(iter(done)).count
    return count, sorted(set(range(count)) - {p.index for p in done})


def write_marker(part: Part, output: str | os.PathLike, stats: dict) -> None:
    """Record that ``part`` finished (written atomically: a marker is whole or absent)."""
    path = part.marker(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(stats, indent=2))
    os.replace(tmp, path)
