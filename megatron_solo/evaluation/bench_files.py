"""Benchmark files as the harnesses distribute them, read into one kind of question (:class:`BenchItem`).

Formats (chosen by the file's content, not its name):
- VLMEvalKit's TSV (``MMBench_DEV_EN.tsv``, ``MMStar.tsv``, ``MME.tsv``, ``POPE.tsv``, ...): the image
  base64 in ``image`` (or, where rows share an image, the ``index`` of the row that holds it);
- lmms-eval's Hugging Face datasets as local parquet, an Arrow file or a saved ``datasets`` folder
  (``save_to_disk``): image bytes in ``image`` / ``decoded_image`` (a struct with ``bytes``, or a list);
- our JSONL: the same column names, images as paths relative to the file.
Columns (each field takes the first column present): id ``index``/``question_id``/``pid``/``id``;
``question``; ``hint``; options ``A``..``Z``, ``choice_a``.., or a list in ``options``/``choices`` (or,
as in lmms-eval's MMStar, ``Options: A: ..`` inside the question); ``answer`` (a letter, an option
index, "Yes"/"No", or the short answer, ``answers`` a list of accepted ones); ``category`` /
``question_type_id`` / ``question_type``; ``l2-category`` / ``l2_category`` / ``L2-category``.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from megatron_solo.evaluation.errors import EvaluationError

ID_COLUMNS = ("index", "question_id", "pid", "id")
IMAGE_COLUMNS = ("image", "decoded_image", "images")
CATEGORY_COLUMNS = ("category", "question_type_id", "question_type")
L2_COLUMNS = ("l2-category", "l2_category", "L2-category")
LIST_OPTION_COLUMNS = ("options", "choices")
_INLINE_OPTIONS = re.compile(r"(?:^|\n|\s)([A-Z])[:.]\s*(.*?)(?=(?:,?\s+|\n)[A-Z][:.]\s|\s*$)", re.S)


@dataclass
class BenchItem:
    """One benchmark question, whatever file it came from."""

    id: str
    images: list[bytes | str]  # encoded image bytes or a path
    question: str
    options: list[str]  # empty for yes/no and short-answer questions
    answer: str  # as the file gives it (a letter, an index, "Yes", a short answer)
    answers: list[str] = field(default_factory=list)  # accepted short answers (answer first)
    hint: str = ""
    category: str = ""
    l2: str = ""
    where: str = ""  # FILE:row, for messages


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and value != value) or str(value).strip() in ("", "nan")


def _first(row: dict, columns: tuple[str, ...]):
    for c in columns:
        if c in row and not _blank(row[c]):
            return row[c]
    return None


def _tsv_rows(path: Path) -> Iterator[tuple[str, dict]]:
    csv.field_size_limit(sys.maxsize)  # a base64 image is one field of megabytes
    with open(path, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.DictReader(f, delimiter="\t"), 2):
            yield f"{path}:{n}", row


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise EvaluationError(f"{path}:{n}: not valid JSON ({err})") from None
                if not isinstance(row, dict):
                    raise EvaluationError(f"{path}:{n}: a row must be a JSON object")
                yield f"{path}:{n}", row


def _table_rows(path: Path, kind: str) -> Iterator[tuple[str, dict]]:
    """Rows of a parquet / Arrow file or saved datasets folder; a row group that cannot be decoded is an error
    here (a benchmark scored without some of its questions is not its score)."""
    from megatron_solo.data.input_types import UnreadableInput
    from megatron_solo.data.tables import table_rows

    try:
        for where, row in table_rows(path, kind):
            if row.get("skip") == "bad_row_group":
                raise EvaluationError(row["error"])
            yield where, row
    except UnreadableInput as err:
        raise EvaluationError(str(err)) from None


def file_rows(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(FILE:row, row) of a benchmark file: TSV, JSONL, parquet, Arrow or a saved datasets folder."""
    from megatron_solo.data.input_types import UnreadableInput, input_type

    path = Path(path)
    if path.is_dir():
        return _table_rows(path, "hf_folder")
    if not path.is_file():
        raise EvaluationError(f"--benchmark {path}: no such file or folder")
    try:
        kind = input_type(path)  # the columnar formats by their magic bytes, as preprocessing tells them
    except UnreadableInput as err:
        raise EvaluationError(str(err)) from None
    if kind in ("parquet", "arrow"):
        return _table_rows(path, kind)
    with open(path, "rb") as f:
        head = f.read(64)
    return _jsonl_rows(path) if head.lstrip()[:1] == b"{" else _tsv_rows(path)


def _image_bytes(value, where: str, base: Path, by_index: dict) -> list[bytes | str]:
    """The images of a cell: bytes, a {"bytes"/"path"} struct, base64 text, a row index, a path, or a list."""
    if _blank(value):
        return []
    if isinstance(value, list):
        return [img for v in value for img in _image_bytes(v, where, base, by_index)]
    if isinstance(value, dict):
        if value.get("bytes"):
            return [bytes(value["bytes"])]
        value = value.get("path")
        if _blank(value):
            return []
    if isinstance(value, (bytes, bytearray)):
        return [bytes(value)]
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):  # VLMEvalKit: several images as a JSON list
        return _image_bytes(json.loads(text), where, base, by_index)
    if text in by_index:  # VLMEvalKit: a repeated image names the row that holds it
        return by_index[text]
    if len(text) > 256:
        try:
            return [base64.b64decode(text, validate=True)]
        except (binascii.Error, ValueError):
            raise EvaluationError(f"{where}: 'image' is neither base64 nor a path") from None
    image = Path(text) if Path(text).is_absolute() else base / text
    if not image.is_file():
        raise EvaluationError(f"{where}: image {text!r} not found (looked at {image})")
    return [str(image)]


def _options(row: dict, question: str) -> tuple[list[str], str]:
    """(options, question): option columns, a list column, or options written inside the question."""
    letters = []
    for prefix in ("", "choice_"):
        for k in range(26):
            key = prefix + (chr(65 + k) if not prefix else chr(97 + k))
            if key not in row or _blank(row[key]):
                break
            letters.append(str(row[key]).strip())
        if letters:
            return letters, question
    listed = _first(row, LIST_OPTION_COLUMNS)
    if isinstance(listed, str) and listed.startswith("["):
        listed = json.loads(listed)
    if isinstance(listed, list):
        return [str(o).strip() for o in listed], question
    head, sep, tail = question.partition("Options:")
    if sep:
        found = _INLINE_OPTIONS.findall(tail)
        if [m[0] for m in found] == [chr(65 + k) for k in range(len(found))] and len(found) >= 2:
            return [m[1].strip().rstrip(",") for m in found], head.strip()
    return [], question


def _item(row: dict, where: str, n: int, base: Path, by_index: dict) -> BenchItem:
    question = _first(row, ("question",))
    if question is None:
        raise EvaluationError(f"{where}: no 'question' (columns: {', '.join(sorted(map(str, row)))})")
    options, question = _options(row, str(question).strip())
    answers = row.get("answers")
    answer = _first(row, ("answer",))
    if answer is None and isinstance(answers, list) and answers:
        answer = answers[0]
    if answer is None:
        raise EvaluationError(f"{where}: no 'answer'")
    accepted = [str(answer)] + [str(a) for a in answers if str(a) != str(answer)] if isinstance(answers, list) \
        else [str(answer)]
    images = [img for c in IMAGE_COLUMNS if c in row for img in _image_bytes(row[c], where, base, by_index)][:64]
    hint = _first(row, ("hint",))
    return BenchItem(id=str(_first(row, ID_COLUMNS) if _first(row, ID_COLUMNS) is not None else n),
                     images=images, question=question, options=options, answer=str(answer).strip(),
                     answers=accepted, hint="" if hint is None else str(hint).strip(),
                     category=str(_first(row, CATEGORY_COLUMNS) or ""), l2=str(_first(row, L2_COLUMNS) or ""),
                     where=where)


def read_items(path: str | Path, max_items: int | None = None) -> list[BenchItem]:
    """The questions of a benchmark file (EvaluationError naming the file, row and field at fault)."""
    path = Path(path)
    base = path if path.is_dir() else path.parent
    items: list[BenchItem] = []
    by_index: dict[str, list] = {}  # VLMEvalKit's index -> images, for rows that refer to another's image
    seen: dict[tuple[str, str], str] = {}
    count: dict[str, int] = {}
    for n, (where, row) in enumerate(file_rows(path)):
        if max_items is not None and len(items) >= max_items:
            break
        item = _item(row, where, n, base, by_index)
        if (item.id, item.question) in seen:
            raise EvaluationError(f"{where}: question {item.id!r} repeats the one at {seen[item.id, item.question]}")
        seen[item.id, item.question] = where
        if item.images and item.id not in by_index:
            by_index[item.id] = item.images
        count[item.id] = count.get(item.id, 0) + 1
        if count[item.id] > 1:  # lmms-eval's MME: question_id names the image, shared by its two questions
            item.id = f"{item.id}#{count[item.id]}"
        items.append(item)
    if not items:
        raise EvaluationError(f"--benchmark {path}: no questions")
    return items
