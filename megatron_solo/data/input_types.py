"""What an input is (by its content, and its name where content cannot tell), and which kinds read it.

Binary formats are recognised by their magic bytes (a parquet file named ``caps.jsonl`` is parquet); text
has no NUL byte in its first 64 KiB, and then its suffix says which text format (``.json`` a list, ``.csv``/``.tsv``
label lines, anything else JSON lines). A folder is a saved Hugging Face ``datasets`` folder
(``state.json`` + ``dataset_info.json``), an ``energon prepare``-d dataset (``.nv-meta/dataset.yaml``) or
a plain folder (class sub-folders). An input no reader of the kind takes is refused before anything is
read, in one line naming the file and what it is.
"""

from __future__ import annotations

import os
from pathlib import Path

from megatron_solo.errors import UserInputError

_SNIFF = 1 << 16  # bytes read to tell text from binary


class UnreadableInput(UserInputError):
    """An input that no reader of the requested kind takes; names the file and what it was taken for."""


def _text_type(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".json"):
        return "json"
    if name.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    return "jsonl"


def _is_text(head: bytes) -> bool:
    # a NUL byte: every binary format we could be given (images, archives, columnar files) has them early;
    # text that is not quite UTF-8 is still text: its bad lines are counted skips or a whole-file error later
    return b"\0" not in head


def _folder_type(path: Path) -> str:
    if (path / ".nv-meta" / "dataset.yaml").is_file():
        return "energon"
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if (p / "state.json").is_file())
        raise UnreadableInput(f"{path}: a saved DatasetDict; pass one split's folder ({', '.join(splits)})")
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        return "hf_folder"
    return "folder"


def input_type(path: str | os.PathLike) -> str:
    """folder, hf_folder, energon, parquet, arrow, tar, json, jsonl or csv (``*.gz`` text: the same, gzipped)."""
    path = Path(path)
    if path.is_dir():
        return _folder_type(path)
    with open(path, "rb") as f:
        head = f.read(_SNIFF)
    if head[:4] == b"PAR1":
        return "parquet"
    if head[:6] == b"ARROW1" or head[:4] == b"\xff\xff\xff\xff":  # IPC file / stream (datasets' .arrow)
        return "arrow"
    if head[257:262] == b"ustar":
        return "tar"
    if head[:2] == b"\x1f\x8b":
        return _text_type(path)  # gzip: read line by line through gzip (sources._lines)
    if not head or _is_text(head):
        return _text_type(path)
    raise UnreadableInput(f"{path}: not a format any reader takes (binary, {head[:8]!r}...: not parquet, arrow, "
                          "tar, gzip or text)")


def is_gzip(path: str | os.PathLike) -> bool:
    """Whether a file is gzip-compressed (by its magic bytes)."""
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def check_input(kind: str, path: str | os.PathLike, accepted: frozenset[str]) -> str:
    """The input's type when a reader of ``kind`` takes it; UnreadableInput in one line otherwise."""
    found = input_type(path)
    if found not in accepted:
        raise UnreadableInput(f"{path}: the {kind} reader does not take {found.replace('_', ' ')} inputs "
                              f"(it reads: {', '.join(sorted(accepted))})")
    return found
