"""Benchmark files as the harnesses distribute them, read into one kind of question (:class:`BenchItem`).

Formats (chosen by the file's content, not its name), each a schema of :mod:`.harnesses`:
- VLMEvalKit's TSV (``MMBench_DEV_EN.tsv``, ``MMStar.tsv``, ``MME.tsv``, ``POPE.tsv``, ...): the image
  base64 in ``image``, or, as VLMEvalKit reads a cell of at most 64 characters, the ``index`` of the row
  that holds it (before or after);
- lmms-eval's Hugging Face datasets as local parquet, an Arrow file or a saved ``datasets`` folder
  (``save_to_disk``): image bytes in ``decoded_image`` / ``image`` (a struct with ``bytes``, or a list);
- our JSONL: the same column names, images as paths relative to the file.
Columns (each field takes the first column present): id ``index``/``question_id``/``pid``/``id``;
``question``; ``hint``; options ``A``..``Z``, ``choice_a``.., or a list in ``options``/``choices`` (JSON or a
Python list's text, or, as in lmms-eval's MMStar, ``Options: A: ..`` inside the question); ``answer`` (what
it holds is the schema's: see :mod:`.benchmarks`; MM-Vet's alternatives joined by ``<OR>``; ``answers``
a list of accepted ones); ``category`` / ``question_type_id`` / ``question_type``; ``l2-category`` /
``l2_category`` / ``L2-category``; ``data_type`` (SEED-Bench: image or video); the image: the first of
``decoded_image``, ``image``, ``images`` that a row fills (MathVista's ``image`` is only a path).
"""

from __future__ import annotations

import ast
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
from megatron_solo.evaluation.harnesses import JSONL, LMMS_EVAL, VLMEVALKIT

ID_COLUMNS = ("index", "question_id", "pid", "id")
IMAGE_COLUMNS = ("decoded_image", "image", "images")
REFERENCE_CHARS = 64  # VLMEvalKit: an image cell this short is the index of the row holding the image
ALTERNATIVES = "<OR>"  # MM-Vet: accepted answers joined in one cell
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
    schema: str = JSONL  # the harness whose file it came from (harnesses.py)
    data_type: str = ""  # SEED-Bench: "image" or "video"


class _Later(str):
    """A TSV image cell naming a row not read yet (VLMEvalKit: the index of the row that holds the image)."""


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


def file_rows(path: str | Path) -> tuple[str, Iterator[tuple[str, dict]]]:
    """The schema of a benchmark file (TSV, JSONL, parquet, Arrow or a saved datasets folder) and its
    (FILE:row, row)."""
    from megatron_solo.data.input_types import UnreadableInput, input_type

    path = Path(path)
    if path.is_dir():
        return LMMS_EVAL, _table_rows(path, "hf_folder")
    if not path.is_file():
        raise EvaluationError(f"--benchmark {path}: no such file or folder")
    try:
        kind = input_type(path)  # the columnar formats by their magic bytes, as preprocessing tells them
    except UnreadableInput as err:
        raise EvaluationError(str(err)) from None
    if kind in ("parquet", "arrow"):
        return LMMS_EVAL, _table_rows(path, kind)
    with open(path, "rb") as f:
        head = f.read(64)
    return (JSONL, _jsonl_rows(path)) if head.lstrip()[:1] == b"{" else (VLMEVALKIT, _tsv_rows(path))


def _image_bytes(value, where: str, base: Path, by_index: dict, schema: str) -> list:
    """The images of a cell: bytes, a {"bytes"/"path"} struct, base64 text, a row index, a path, or a list."""
    if _blank(value):
        return []
    if isinstance(value, list):
        return [img for v in value for img in _image_bytes(v, where, base, by_index, schema)]
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
        return _image_bytes(json.loads(text), where, base, by_index, schema)
    if text in by_index:  # VLMEvalKit: a repeated image names the row that holds it
        return by_index[text]
    if len(text) > 256:
        try:
            return [base64.b64decode(text, validate=True)]
        except (binascii.Error, ValueError):
            raise EvaluationError(f"{where}: 'image' is neither base64 nor a path") from None
    image = Path(text) if Path(text).is_absolute() else base / text
    if image.is_file():
        return [str(image)]
    if schema == VLMEVALKIT and len(text) <= REFERENCE_CHARS:
        return [_Later(text)]  # a row further down, resolved once the file is read
    raise EvaluationError(f"{where}: image {text!r} not found (looked at {image})")


def _listed_options(value, where: str) -> list | None:
    """A list column's options: a list, or its JSON or Python text (MathVista's TSV writes Python's)."""
    if not isinstance(value, str) or not value.strip().startswith("["):
        return value if isinstance(value, list) else None
    for parse in (json.loads, ast.literal_eval):
        try:
            parsed = parse(value)
        except (ValueError, SyntaxError):
            continue
        if isinstance(parsed, list):
            return parsed
    raise EvaluationError(f"{where}: 'options'/'choices' {value[:60]!r} is not a list")


def _options(row: dict, question: str, where: str) -> tuple[list[str], str]:
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
    listed = _listed_options(_first(row, LIST_OPTION_COLUMNS), where)
    if listed is not None:
        return [str(o).strip() for o in listed], question
    head, sep, tail = question.partition("Options:")
    if sep:
        found = _INLINE_OPTIONS.findall(tail)
        if [m[0] for m in found] == [chr(65 + k) for k in range(len(found))] and len(found) >= 2:
            return [m[1].strip().rstrip(",") for m in found], head.strip()
    return [], question


def _accepted(answer, answers) -> list[str]:
    """The accepted short answers: the answer (its <OR> alternatives) first, then the ``answers`` list."""
    accepted = [a.strip() for a in str(answer).split(ALTERNATIVES)] if ALTERNATIVES in str(answer) else [str(answer)]
    return accepted + [str(a) for a in answers if str(a) not in accepted] if isinstance(answers, list) else accepted


def _item(row: dict, where: str, n: int, base: Path, by_index: dict, schema: str) -> BenchItem:
    question = _first(row, ("question",))
    if question is None:
        raise EvaluationError(f"{where}: no 'question' (columns: {', '.join(sorted(map(str, row)))})")
    options, question = _options(row, str(question).strip(), where)
    answers = row.get("answers")
    answer = _first(row, ("answer",))
    if answer is None and isinstance(answers, list) and answers:
        answer = answers[0]
    if answer is None:
        raise EvaluationError(f"{where}: no 'answer'")
    images = _image_bytes(_first(row, IMAGE_COLUMNS), where, base, by_index, schema)[:64]
    hint, qid = _first(row, ("hint",)), _first(row, ID_COLUMNS)
    return BenchItem(id=str(qid if qid is not None else n), images=images, question=question, options=options,
                     answer=str(answer).strip(), answers=_accepted(answer, answers),
                     hint="" if hint is None else str(hint).strip(), category=str(_first(row, CATEGORY_COLUMNS) or ""),
                     l2=str(_first(row, L2_COLUMNS) or ""), where=where, schema=schema,
                     data_type=str(_first(row, ("data_type",)) or ""))


def _later(images: list) -> list[str]:
    return [str(img) for img in images if isinstance(img, _Later)]


def _resolve_later(items: list[BenchItem], by_index: dict, base: Path) -> None:
    """Give each item whose image cell named a later row that row's images."""
    for item in items:
        for ref in _later(item.images):
            if ref not in by_index:
                raise EvaluationError(f"{item.where}: image {ref!r} is neither the index of a row holding an image "
                                      f"nor a file (looked at {base / ref})")
        if _later(item.images):
            item.images = [i for img in item.images for i in (by_index[img] if isinstance(img, _Later) else [img])]


def read_items(path: str | Path, max_items: int | None = None) -> list[BenchItem]:
    """The questions of a benchmark file (EvaluationError naming the file, row and field at fault)."""
    path = Path(path)
    base = path if path.is_dir() else path.parent
    schema, rows = file_rows(path)
    items: list[BenchItem] = []
    by_index: dict[str, list] = {}  # VLMEvalKit's index -> images, for rows that refer to another's image
    seen: dict[tuple[str, str, str], str] = {}
    count: dict[str, int] = {}
    waiting: set[str] = set()  # rows named by an image cell above, not read yet
    for n, (where, row) in enumerate(rows):
        full = max_items is not None and len(items) >= max_items
        if full and not waiting:
            break
        item = _item(row, where, n, base, by_index, schema)
        later = _later(item.images)
        if item.images and not later and item.id not in by_index:
            by_index[item.id] = item.images
            waiting.discard(item.id)
        if full:
            continue  # read only for the image a question above names
        waiting.update(ref for ref in later if ref not in by_index)
        key = (item.category, item.id, item.question)  # POPE's splits number their questions from 1 each
        if key in seen:
            raise EvaluationError(f"{where}: question {item.id!r} repeats the one at {seen[key]}")
        seen[key] = where
        count[item.id] = count.get(item.id, 0) + 1
        if count[item.id] > 1:  # lmms-eval's MME: question_id names the image, shared by its two questions
            item.id = f"{item.id}#{count[item.id]}"
        items.append(item)
    if not items:
        raise EvaluationError(f"--benchmark {path}: no questions")
    _resolve_later(items, by_index, base)
    return items
