"""Columnar sources: parquet files, Arrow files and saved Hugging Face ``datasets`` folders, row by row.

A file is read one row group at a time (parquet row groups; the record batches of an Arrow file, as
``datasets`` writes them), never whole, so a file of any size costs one row group of memory. Each row is
yielded with where it came from, ``FILE:row_group G:row R`` (R counted inside its row group), which the
skip examples quote. A row group that cannot be decoded is one counted skip naming it; the rows before it
and the row groups after it are kept. pyarrow is imported here only: a run without columnar inputs does
not need it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from megatron_solo.data.input_types import UnreadableInput


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401  (the submodules are not imported by the package itself)
        import pyarrow.parquet  # noqa: F401
    except ImportError as err:  # pragma: no cover - pyarrow is in requirements.txt
        raise UnreadableInput(f"reading parquet / Arrow inputs needs pyarrow (pip install pyarrow): {err}") from None
    return pyarrow


def _parquet_groups(path: Path) -> Iterator[tuple[int, object]]:
    pa = _pyarrow()
    try:
        reader = pa.parquet.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise UnreadableInput(f"{path}: not a readable parquet file ({err})") from None
    for g in range(reader.num_row_groups):
        try:
            yield g, reader.read_row_group(g)
        except (pa.ArrowException, OSError) as err:
            yield g, err


def _arrow_groups(path: Path) -> Iterator[tuple[int, object]]:
    pa = _pyarrow()
    source = pa.memory_map(str(path))  # mapped, not read: a batch is paged in when it is used
    try:
        try:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        except pa.ArrowInvalid:
            batches = iter(pa.ipc.open_stream(source))  # datasets writes the streaming format
    except (pa.ArrowException, OSError) as err:
        raise UnreadableInput(f"{path}: not a readable Arrow file ({err})") from None
    g = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as err:
            yield g, err  # a damaged stream cannot be resynchronised: what follows is lost with it
            return
        yield g, batch
        g += 1


def hf_folder_files(folder: Path) -> list[Path]:
    """The Arrow files of a saved ``datasets`` folder, in its own order (state.json's data files)."""
    try:
        state = json.loads((folder / "state.json").read_text())
        files = [folder / f["filename"] for f in state["_data_files"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise UnreadableInput(f"{folder}: state.json does not list the dataset's files ({err})") from None
    for f in files:
        if not f.is_file():
            raise UnreadableInput(f"{folder}: state.json lists {f.name}, which is not there")
    return files


def table_rows(path: Path, kind: str) -> Iterator[tuple[str, dict]]:
    """(FILE:row_group G:row R, row as a dict) of a parquet / arrow file or a saved datasets folder."""
    if kind == "hf_folder":
        for f in hf_folder_files(path):
            yield from table_rows(f, "arrow")
        return
    groups = _parquet_groups(path) if kind == "parquet" else _arrow_groups(path)
    for g, group in groups:
        where = f"{path}:row_group {g}"
        if isinstance(group, Exception):
            yield where, {"skip": "bad_row_group", "error": f"{where}: cannot be decoded ({group})"[:400]}
            continue
        for r, row in enumerate(group.to_pylist()):
            yield f"{where}:row {r}", row
