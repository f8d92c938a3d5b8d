"""Where checkpoints live under a save root, and which one a path means.

Layout of a save root::

    SAVE/iter_0000100/                    one checkpoint (torch_dist format + solo_train_state.json)
    SAVE/iter_0000200.partial/            being written (never taken as a checkpoint; holds PARTIAL_MARKER)
    SAVE/latest_checkpointed_iteration.txt
    SAVE/solo_model.json, SAVE/tokenizer/ what export and evaluation need besides the weights
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path

from megatron_solo.errors import UserInputError

LATEST_FILE = "latest_checkpointed_iteration.txt"
PARTIAL_SUFFIX = ".partial"
PARTIAL_MARKER = ".solo_partial"  # inside an iter_N.partial folder a save made: only such folders are removed
TRAIN_STATE_FILE = "solo_train_state.json"  # inside iter_N: iteration, data position, schedule, layout


class CheckpointError(UserInputError):
    """A checkpoint (or save root) that cannot be used; the message names the path or field at fault."""


def checkpoint_dir(root: str | os.PathLike, iteration: int) -> str:
    """Directory of the checkpoint of ``iteration`` under ``root``."""
    return os.path.join(str(root), f"iter_{iteration:07d}")


def latest_iteration(root: str | os.PathLike) -> int | None:
    """Iteration named by the ``latest`` file, or None when there is no finished checkpoint."""
    path = os.path.join(str(root), LATEST_FILE)
    if not os.path.isfile(path):
        return None
    text = Path(path).read_text().strip()
    if not text.isdigit():
        raise CheckpointError(f"{path}: expected an iteration number, found {text!r}")
    iteration = int(text)
    if not os.path.isdir(checkpoint_dir(root, iteration)):
        raise CheckpointError(f"{path} names iteration {iteration} but {checkpoint_dir(root, iteration)} is missing")
    return iteration


def newest_complete_iteration(root: str | os.PathLike) -> int | None:
    """The newest finished ``iter_N`` under ``root`` whatever the latest file says; None without one.

    A save writes ``iter_N.partial`` and renames it when complete, so every ``iter_N`` is whole.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    found = [int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(r"iter_(\d{7})", p.name))
             and is_checkpoint_dir(p)]
    return max(found, default=None)


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like one written checkpoint (dist_checkpointing's metadata is there)."""
    path = Path(path)
    return (path / "metadata.json").is_file() or (path / "common.pt").is_file()


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, Path]:
    """(save root, iter_N directory) of a checkpoint given either one; refuses unfinished ``.partial`` ones."""
    path = Path(os.path.normpath(str(path)))  # "iter_N.partial/" must not slip past the suffix check
    if path.name.endswith(PARTIAL_SUFFIX):
        raise CheckpointError(f"{path}: an unfinished checkpoint (its save was interrupted); use a finished "
                              f"iter_N folder or the save root")
    if (path / LATEST_FILE).is_file():
        return path, Path(checkpoint_dir(path, latest_iteration(path)))
    if is_checkpoint_dir(path):
        return path.parent, path
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    newest = newest_complete_iteration(path)
    if newest is None:
        raise CheckpointError(f"{path}: neither a checkpoint directory nor a save root with {LATEST_FILE} or a "
                              "complete iter_N folder")
    _say_once(without_latest_note(path, newest))
    return path, Path(checkpoint_dir(path, newest))


def without_latest_note(root: str | os.PathLike, iteration: int) -> str:
    """What a reader of a save root without its latest file is told: which checkpoint it takes."""
    return (f"note: {root} has no {LATEST_FILE}; taking its newest complete checkpoint "
            f"{Path(checkpoint_dir(root, iteration)).name}")


@functools.cache
def _say_once(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
