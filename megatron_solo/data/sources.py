"""Readers of raw sources: each yields lightweight records (dicts) in a deterministic order.

A record is either a sample to build ({"kind": ..., fields, "origin": where it came from: file:line of a
JSONL row, file[i] of a JSON list item, tar:key, or the image path of a class folder}) or a counted skip
found while reading ({"skip": reason, "error": message naming the file and line}). Images are referenced by path, or carried as bytes when they come
out of a tar. Kinds and accepted inputs:
- classification: a folder of class sub-folders, or a label file (TSV/CSV "path,label" or JSONL
  {"image", "label"}); optional class-name map (JSON object label->name, JSON list, or a text file
  with one name per line, the line number being the label).
- caption: img2dataset-style webdataset tars (K.jpg/png/webp + K.txt), or rows {"image", "caption"|"text"}.
- interleaved: JSONL, MMC4 style {"text_list", "image_info": [{"image_name", "matched_text_index"}]} or
  OBELICS style {"texts": [str|null], "images": [path|null]}.
- text: JSONL {"text"} (optionally .gz).
- conversation: LLaVA JSON (a list) or JSONL: {"image": path | [paths], "conversations": [...]}; The
  Cauldron's {"images": [...], "texts": [{"user", "assistant"}]} too.
An ``energon prepare``-d dataset is a caption or conversation source (``energon_source.py``).
Rows may also come from parquet, Arrow or a saved ``datasets`` folder (``tables.py``), where an image is
bytes, a path or the ``datasets`` Image struct {"bytes", "path"}; ``Columns`` renames a source's image and
text columns to the ones read here. ``input_types.py`` says what an input is, by content.
"""

from __future__ import annotations

import csv
import errno
import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from megatron_solo.data.energon_source import energon_records
from megatron_solo.data.input_types import input_type, is_gzip
from megatron_solo.data.tables import table_rows
from megatron_solo.data.tar_source import tar_captions
from megatron_solo.errors import UserInputError


class SourceError(UserInputError):
    """A whole raw input that cannot be read (not UTF-8, not valid JSON, wrong shape); names the file."""


@dataclass(frozen=True)
class Columns:
    """A source's own names for the image and the text column (None: "image", and "caption"/"text")."""

    image: str | None = None
    text: str | None = None

    def apply(self, row: dict) -> dict:
        """The row with the named columns under the names the readers use."""
        if self.image and self.image != "image" and "skip" not in row:
            row = {**row, "image": row.get(self.image)}
        if self.text and "skip" not in row:
            row = {**row, "caption": row.get(self.text), "text": row.get(self.text)}
        return row


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of a text file, gzip-aware; decoding is per line so one bad line costs one row."""
    try:
        with gzip.open(path, "rb") if is_gzip(path) else open(path, "rb") as f:
            yield from enumerate(f, 1)
    except (EOFError, gzip.BadGzipFile) as err:
        raise SourceError(f"{path}: damaged compressed file ({err})") from err


def _decode_line(raw: bytes, lineno: int, where: str) -> str | dict:
    """The line as text, or a counted skip naming file:line when it is not UTF-8."""
    try:
        # a BOM at the start of a file written by some Windows tools is not part of the first row
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as err:
        return {"skip": "bad_encoding", "error": f"{where}: not UTF-8 (byte {err.start} of the line: {err.reason})"}


def _jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    """(file:line, row) of a JSONL file; a malformed or non-UTF-8 line becomes a counted skip."""
    for lineno, raw in _lines(path):
        where = f"{path}:{lineno}"
        line = _decode_line(raw, lineno, where)
        if isinstance(line, dict):
            yield where, line
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            yield where, {"skip": "bad_json", "error": f"{where}: {err}"}
            continue
        if not isinstance(row, dict):
            yield where, {"skip": "bad_json", "error": f"{where}: not an object"}
            continue
        yield where, row


def _read_text(path: Path) -> str:
    """A whole text file; SourceError naming the file when it is not UTF-8."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SourceError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); re-encode it as UTF-8") from err


def _rows(path: Path, columns: Columns | None = None) -> Iterator[tuple[str, dict]]:
    """(where, row) of a JSON list (where = file[i]), a JSONL file (file:line) or a table (file:row_group G:row R)."""
    if columns is not None:
        for where, row in _rows(path):
            yield where, columns.apply(row)
        return
    found = input_type(path)
    if found in ("parquet", "arrow", "hf_folder"):
        yield from table_rows(path, found)
    elif found == "json":
        try:
            data = json.loads(_read_text(path))
        except json.JSONDecodeError as err:
            raise SourceError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(data, list):
            raise SourceError(f"{path}: expected a JSON list of samples")
        for i, r in enumerate(data):
            where = f"{path}[{i}]"
            yield where, r if isinstance(r, dict) else {"skip": "bad_json", "error": f"{where}: not an object"}
    else:
        yield from _jsonl(path)


def _resolve(path: str, root: Path) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else root / p)


def image_ref(value, root: Path) -> str | bytes | None:
    """An image cell as the image loader takes it: encoded bytes, or a path resolved against ``root``.

    A cell is a path, bytes, or the ``datasets`` Image struct {"bytes", "path"} (bytes win when both are set).
    """
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value) or None
    if isinstance(value, str) and value:
        return _resolve(value, root)
    return None


def load_class_names(path: str | os.PathLike | None) -> dict[str, str] | None:
    """Label -> class name from a JSON object, JSON list or one-name-per-line text file."""
    if path is None:
        return None
    path = Path(path)
    text = _read_text(path)
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SourceError(f"{path}: not valid JSON ({err})") from err
        if isinstance(data, list):
            return {str(i): str(v) for i, v in enumerate(data)}
        if isinstance(data, dict):
            return {str(k): (v if isinstance(v, str) else str(v[-1] if isinstance(v, list) else v))
                    for k, v in data.items()}
        raise SourceError(f"{path}: class-name map must be a JSON object or list")
    return {str(i): line.strip() for i, line in enumerate(text.splitlines())}


def _rows_with_root(inputs: list[str], image_root: str | None, columns: Columns | None = None
                    ) -> Iterator[tuple[str, Path, dict]]:
    """(where, folder its image paths are relative to, row) for every row; skip markers included."""
    for item in inputs:
        path = Path(item)
        root = Path(image_root) if image_root else (path if path.is_dir() else path.parent)
        for where, row in _rows(path, columns):
            yield where, root, row


def path_problem(p: Path) -> dict | None:
    """A counted skip for a folder entry that cannot be followed (symlink loop, dangling link, no access)."""
    try:
        p.stat()  # follows symlinks: a loop or a dangling link fails here, where is_file() just says False
    except OSError as err:
        if err.errno == errno.ELOOP:
            return {"skip": "symlink_loop", "error": f"{p}: symlink loop"}
        if err.errno == errno.ENOENT and p.is_symlink():
            return {"skip": "broken_symlink", "error": f"{p}: symlink to {os.readlink(p)}, which does not exist"}
        return {"skip": "unreadable_path", "error": f"{p}: {err.strerror or err}"}
    return None


def _class_folder_records(path: Path) -> Iterator[dict]:
    """Records of a folder of class sub-folders; entries that cannot be followed are counted, not lost."""
    for cls in sorted(path.iterdir()):
        problem = path_problem(cls)
        if problem is not None:
            yield problem
            continue
        if not cls.is_dir():
            continue  # a README or label list beside the class folders
        try:
            entries = sorted(cls.iterdir())
        except OSError as err:
            yield {"skip": "unreadable_path", "error": f"{cls}: {err.strerror or err}"}
            continue
        for img in entries:
            problem = path_problem(img)
            if problem is not None:
                yield problem
            elif img.is_file():
                yield {"kind": "classification", "image": str(img), "label": cls.name, "id": img.stem,
                       "origin": str(img)}


def _label_file_records(path: Path, root: Path) -> Iterator[dict]:
    """Records of a TSV/CSV "path<sep>label" file, line by line (a bad line costs only itself)."""
    delim = "\t" if path.suffix in (".tsv", ".txt") else ","
    for lineno, raw in _lines(path):
        where = f"{path}:{lineno}"
        line = _decode_line(raw, lineno, where)
        if isinstance(line, dict):
            yield line
            continue
        row = next(csv.reader([line], delimiter=delim), [])
        if not row:
            continue
        if len(row) < 2:
            yield {"skip": "bad_record", "error": f"{where}: expected 'path{delim}label'"}
            continue
        yield {"kind": "classification", "image": _resolve(row[0], root), "label": row[1].strip(),
               "id": Path(row[0]).stem, "origin": where}


def _classification_rows(path: Path, root: Path, columns: Columns | None) -> Iterator[dict]:
    """Records of JSONL / table rows {"image", "label"}."""
    for where, row in _rows(path, columns):
        if "skip" in row:
            yield row
        elif image_ref(row.get("image"), root) is None or row.get("label") is None:
            missing = [k for k, ok in (("image", image_ref(row.get("image"), root)), ("label", row.get("label")))
                       if ok is None]
            yield {"skip": "missing_field", "error": f"{where}: no {' and no '.join(map(repr, missing))} field"}
        else:
            name = row["image"].get("path") if isinstance(row["image"], dict) else row["image"]
            yield {"kind": "classification", "image": image_ref(row["image"], root), "label": str(row["label"]),
                   "id": Path(name).stem if isinstance(name, str) else "", "origin": where}


def classification_records(inputs: list[str], image_root: str | None = None,
                           columns: Columns | None = None) -> Iterator[dict]:
    """Image + label records from class folders, label files or rows {"image", "label"}."""
    for item in inputs:
        path = Path(item)
        found = input_type(path)
        if found == "folder":
            yield from _class_folder_records(path)
            continue
        root = Path(image_root) if image_root else (path if path.is_dir() else path.parent)
        if found == "csv":
            yield from _label_file_records(path, root)
        else:
            yield from _classification_rows(path, root, columns)


def caption_records(inputs: list[str], image_root: str | None = None,
                    columns: Columns | None = None) -> Iterator[dict]:
    """Image-caption records from img2dataset tars or rows {"image", "caption"|"text"} (JSON(L), tables)."""
    for item in inputs:
        path = Path(item)
        found = input_type(path)
        if found in ("tar", "energon"):
            yield from tar_captions(path) if found == "tar" else energon_records(path, "caption")
            continue
        for where, root, row in _rows_with_root([item], image_root, columns):
            image = None if "skip" in row else image_ref(row.get("image"), root)
            if "skip" in row:
                yield row
            elif image is None:
                yield {"skip": "missing_image", "error": f"{where}: row without an image"}
            else:
                caption = row.get("caption") if row.get("caption") is not None else row.get("text")
                yield {"kind": "caption", "image": image, "caption": caption or "", "id": str(row.get("id", "")),
                       "origin": where}


def interleaved_records(inputs: list[str], image_root: str | None = None,
                        columns: Columns | None = None) -> Iterator[dict]:
    """Interleaved documents as ordered lists of ("text", str) / ("image", path or bytes)."""
    for where, root, row in _rows_with_root(inputs, image_root, columns):
        if "skip" in row:
            yield row
            continue
        try:
            items = _interleaved_items(row, root)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            yield {"skip": "bad_record", "error": f"{where}: malformed interleaved row ({err!r})"}
            continue
        if items is None:
            yield {"skip": "bad_record", "error": f"{where}: interleaved row needs text_list or texts/images"}
            continue
        yield {"kind": "interleaved", "items": items, "id": str(row.get("id", row.get("url", "")))[:200],
               "origin": where}


def _interleaved_items(row: dict, root: Path) -> list[tuple[str, object]] | None:
    """Reading-order ("text"|"image", value) items of an MMC4 or OBELICS row; None for another schema."""
    items: list[tuple[str, str]] = []
    if "text_list" in row:  # MMC4: each image placed before the sentence it was matched to
        by_text: dict[int, list[str]] = {}
        for info in row.get("image_info") or []:
            by_text.setdefault(int(info.get("matched_text_index", 0)), []).append(
                image_ref(info["image_name"], root))
        for i, text in enumerate(row["text_list"]):
            items += [("image", p) for p in by_text.get(i, [])]
            items.append(("text", text or ""))
    elif "texts" in row and "images" in row:  # OBELICS: aligned lists, one of each is null
        for text, image in zip(row["texts"], row["images"]):
            if image:
                ref = image_ref(image, root)
                if ref is None:
                    raise ValueError(f"image cell {str(image)[:60]!r} is neither bytes nor a path")
                items.append(("image", ref))
            elif text:
                items.append(("text", text))
    else:
        return None
    return items


def text_records(inputs: list[str], image_root: str | None = None,
                 columns: Columns | None = None) -> Iterator[dict]:
    """Plain-text documents from rows {"text"} (JSONL, tables)."""
    for item in inputs:
        for where, row in _rows(Path(item), columns):
            if "skip" in row:
                yield row
            elif "text" not in row:
                # another schema (or a typo in the field name) is not an empty document: say which field
                yield {"skip": "missing_field", "error": f"{where}: no 'text' field (has {sorted(row)[:8]})"}
            else:
                yield {"kind": "text", "text": row["text"] or "", "id": str(row.get("id", "")), "origin": where}


def _turns(row: dict) -> list:
    """A row's turns: LLaVA / ShareGPT "conversations", OpenAI "messages", or The Cauldron's user/assistant pairs."""
    turns = row.get("conversations") or row.get("messages")
    if turns is None and isinstance(row.get("texts"), list):
        turns = []
        for pair in row["texts"]:
            if not isinstance(pair, dict):
                return [{"role": "?", "content": str(pair)[:80]}]  # a bad_turn skip when the sample is built
            turns += [{"role": "user", "content": pair.get("user")},
                      {"role": "assistant", "content": pair.get("assistant")}]
    return turns or []


def conversation_records(inputs: list[str], image_root: str | None = None,
                         columns: Columns | None = None) -> Iterator[dict]:
    """Conversations with their images (paths or bytes), LLaVA, OpenAI or The Cauldron style; energon VQA."""
    if any(input_type(item) == "energon" for item in inputs):
        for item in inputs:
            yield from (energon_records(Path(item), "conversation") if input_type(item) == "energon"
                        else conversation_records([item], image_root, columns))
        return
    for where, root, row in _rows_with_root(inputs, image_root, columns):
        if "skip" in row:
            yield row
            continue
        images = row.get("image") or row.get("images") or []
        images = images if isinstance(images, list) else [images]
        refs = [image_ref(p, root) for p in images]
        if any(r is None for r in refs):
            yield {"skip": "missing_image", "error": f"{where}: an image cell is empty"}
            continue
        yield {"kind": "conversation", "images": refs, "turns": _turns(row), "id": str(row.get("id", "")),
               "origin": where}
