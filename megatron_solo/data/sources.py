"""Readers of raw sources: each yields lightweight records (dicts) in a deterministic order.

A record is either a sample to build ({"kind": ..., fields}) or a counted skip found while reading
({"skip": reason, "error": message}). Images are referenced by path, or carried as bytes when they come
out of a tar. Kinds and accepted inputs:
- classification: a folder of class sub-folders, or a label file (TSV/CSV "path,label" or JSONL
  {"image", "label"}); optional class-name map (JSON object label->name, JSON list, or a text file
  with one name per line, the line number being the label).
- caption: img2dataset-style webdataset tars (K.jpg/png/webp + K.txt), or JSONL {"image", "caption"|"text"}.
- interleaved: JSONL, MMC4 style {"text_list", "image_info": [{"image_name", "matched_text_index"}]} or
  OBELICS style {"texts": [str|null], "images": [path|null]}.
- text: JSONL {"text"} (optionally .gz).
- conversation: LLaVA JSON (a list) or JSONL: {"image": path | [paths], "conversations": [...]}.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

IMAGE_EXTS = {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"}


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _jsonl(path: Path) -> Iterator[dict]:
    """Rows of a JSONL file; a malformed line becomes a counted skip."""
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                yield {"skip": "bad_json", "error": f"{path}:{lineno}: {err}"}
                continue
            if not isinstance(row, dict):
                yield {"skip": "bad_json", "error": f"{path}:{lineno}: not an object"}
                continue
            yield row


def _rows(path: Path) -> Iterator[dict]:
    """JSON list or JSONL rows."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of samples")
        yield from (r if isinstance(r, dict) else {"skip": "bad_json", "error": f"{path}: not an object"}
                    for r in data)
    else:
        yield from _jsonl(path)


def _resolve(path: str, root: Path) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else root / p)


def load_class_names(path: str | os.PathLike | None) -> dict[str, str] | None:
    """Label -> class name from a JSON object, JSON list or one-name-per-line text file."""
    if path is None:
        return None
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, list):
            return {str(i): str(v) for i, v in enumerate(data)}
        if isinstance(data, dict):
            return {str(k): (v if isinstance(v, str) else str(v[-1] if isinstance(v, list) else v))
                    for k, v in data.items()}
        raise ValueError(f"{path}: class-name map must be a JSON object or list")
    return {str(i): line.strip() for i, line in enumerate(text.splitlines())}


def _rows_with_root(inputs: list[str], image_root: str | None) -> Iterator[tuple[Path, Path, dict]]:
    """(file, folder its image paths are relative to, row) for every JSON(L) row; skip markers included."""
    for item in inputs:
        path = Path(item)
        root = Path(image_root) if image_root else path.parent
        for row in _rows(path):
            yield path, root, row


def classification_records(inputs: list[str], image_root: str | None = None) -> Iterator[dict]:
    """Image + label records from class folders or label files."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for cls in sorted(p for p in path.iterdir() if p.is_dir()):
                for img in sorted(cls.iterdir()):
                    if img.is_file():
                        yield {"kind": "classification", "image": str(img), "label": cls.name, "id": img.stem}
            continue
        root = Path(image_root) if image_root else path.parent
        if path.suffix in (".jsonl", ".gz"):
            for row in _jsonl(path):
                if "skip" in row:
                    yield row
                elif "image" not in row or "label" not in row:
                    yield {"skip": "bad_record", "error": f"{path}: needs 'image' and 'label'"}
                else:
                    yield {"kind": "classification", "image": _resolve(row["image"], root),
                           "label": str(row["label"]), "id": Path(row["image"]).stem}
            continue
        with open(path, encoding="utf-8", newline="") as f:
            delim = "\t" if path.suffix in (".tsv", ".txt") else ","
            for lineno, row in enumerate(csv.reader(f, delimiter=delim), 1):
                if not row:
                    continue
                if len(row) < 2:
                    yield {"skip": "bad_record", "error": f"{path}:{lineno}: expected 'path{delim}label'"}
                    continue
                yield {"kind": "classification", "image": _resolve(row[0], root), "label": row[1].strip(),
                       "id": Path(row[0]).stem}


def _tar_groups(path: Path) -> Iterator[dict]:
    """Samples of a webdataset tar (members grouped by key); a truncated tar ends in a counted skip."""
    current: dict[str, bytes] = {}
    key = None
    try:
        with tarfile.open(path, "r|*") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                prefix = member.name[: len(member.name) - len(base)]
                k, _, ext = base.partition(".")
                k = prefix + k
                data = tf.extractfile(member).read()
                if k != key and key is not None:
                    yield {"key": key, "members": current}
                    current = {}
                key = k
                current[ext.lower()] = data
    except (tarfile.TarError, EOFError, OSError) as err:
        # keep what was read before the damage; the sample being read is lost and counted
        yield {"skip": "truncated_tar", "error": f"{path}: {err}"}
        return
    if key is not None:
        yield {"key": key, "members": current}


def caption_records(inputs: list[str], image_root: str | None = None) -> Iterator[dict]:
    """Image-caption records from img2dataset tars or JSONL with image paths."""
    for item in inputs:
        path = Path(item)
        if path.suffix == ".tar":
            for group in _tar_groups(path):
                if "skip" in group:
                    yield group
                    continue
                members = group["members"]
                image = next((members[e] for e in members if e.rsplit(".", 1)[-1] in IMAGE_EXTS), None)
                caption = members.get("txt", b"").decode("utf-8", "replace")
                if not caption and "json" in members:
                    try:
                        caption = json.loads(members["json"]).get("caption") or ""
                    except (json.JSONDecodeError, AttributeError):
                        caption = ""
                if image is None:
                    yield {"skip": "missing_image", "error": f"{path}: sample {group['key']} has no image"}
                    continue
                yield {"kind": "caption", "image": image, "caption": caption, "id": group["key"]}
            continue
        root = Path(image_root) if image_root else path.parent
        for row in _rows(path):
            if "skip" in row:
                yield row
            elif "image" not in row:
                yield {"skip": "missing_image", "error": f"{path}: row without 'image'"}
            else:
                yield {"kind": "caption", "image": _resolve(row["image"], root),
                       "caption": row.get("caption", row.get("text", "")) or "", "id": str(row.get("id", ""))}


def interleaved_records(inputs: list[str], image_root: str | None = None) -> Iterator[dict]:
    """Interleaved documents as ordered lists of ("text", str) / ("image", path)."""
    for path, root, row in _rows_with_root(inputs, image_root):
        if "skip" in row:
            yield row
            continue
        try:
            items = _interleaved_items(row, root)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            yield {"skip": "bad_record", "error": f"{path}: malformed interleaved row ({err!r})"}
            continue
        if items is None:
            yield {"skip": "bad_record", "error": f"{path}: interleaved row needs text_list or texts/images"}
            continue
        yield {"kind": "interleaved", "items": items, "id": str(row.get("id", row.get("url", "")))[:200]}


def _interleaved_items(row: dict, root: Path) -> list[tuple[str, str]] | None:
    """Reading-order ("text"|"image", value) items of an MMC4 or OBELICS row; None for another schema."""
    items: list[tuple[str, str]] = []
    if "text_list" in row:  # MMC4: each image placed before the sentence it was matched to
        by_text: dict[int, list[str]] = {}
        for info in row.get("image_info") or []:
            by_text.setdefault(int(info.get("matched_text_index", 0)), []).append(
                _resolve(info["image_name"], root))
        for i, text in enumerate(row["text_list"]):
            items += [("image", p) for p in by_text.get(i, [])]
            items.append(("text", text or ""))
    elif "texts" in row and "images" in row:  # OBELICS: aligned lists, one of each is null
        for text, image in zip(row["texts"], row["images"]):
            if image:
                items.append(("image", _resolve(image, root)))
            elif text:
                items.append(("text", text))
    else:
        return None
    return items


def text_records(inputs: list[str], image_root: str | None = None) -> Iterator[dict]:
    """Plain-text documents from JSONL {"text"}."""
    for item in inputs:
        for row in _jsonl(Path(item)):
            if "skip" in row:
                yield row
            else:
                yield {"kind": "text", "text": row.get("text") or "", "id": str(row.get("id", ""))}


def conversation_records(inputs: list[str], image_root: str | None = None) -> Iterator[dict]:
    """LLaVA-style conversations with their image paths."""
    for _, root, row in _rows_with_root(inputs, image_root):
        if "skip" in row:
            yield row
            continue
        images = row.get("image") or row.get("images") or []
        images = [images] if isinstance(images, str) else list(images)
        turns = row.get("conversations") or row.get("messages") or []
        yield {"kind": "conversation", "images": [_resolve(p, root) for p in images], "turns": turns,
               "id": str(row.get("id", ""))}
