"""The sample-kind registry: one entry per kind, its reader of raw sources and its sample builder.

Adding a kind means writing a reader (raw files -> records, in ``sources.py``), a builder (record ->
:class:`~megatron_solo.data.samples.Sample`, in ``samples.py``) and one :class:`SampleKind` entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from megatron_solo.data import samples as sm
from megatron_solo.data import sources as src
from megatron_solo.data.input_types import check_input
from megatron_solo.errors import UserInputError
from megatron_solo.vocab import Tokenizer


@dataclass
class BuildContext:
    """What a builder may use: the tokenizer, the class-name map and an image loader (decode + SOLO resize)."""

    tok: Tokenizer
    image: Callable[[object], sm.ImageSegment]
    class_names: dict[str, str] | None = None
    caption_template: str = "{}"


_ROWS = frozenset({"jsonl", "json", "parquet", "arrow", "hf_folder"})  # inputs read as rows (sources._rows)


@dataclass(frozen=True)
class SampleKind:
    """A source kind: ``read(inputs, image_root, columns)`` yields records, ``build(record, key, ctx)`` a Sample.

    ``inputs``: the input types (``input_types.input_type``) its reader takes; ``expects``: what an input of
    this kind holds, as a user is told when one yields no record.
    """

    name: str
    read: Callable[[list[str], str | None, src.Columns | None], Iterator[dict]]
    build: Callable[[dict, str, BuildContext], sm.Sample]
    expects: str
    inputs: frozenset[str] = _ROWS


def _classification(record: dict, key: str, ctx: BuildContext) -> sm.Sample:
    if ctx.class_names is not None and str(record["label"]) not in ctx.class_names:
        # checked before decoding the image: no point paying for it
        raise sm.SkipSample("missing_class_name", f"label {record['label']!r} of {record['image']}")
    return sm.classification_sample(key, ctx.image(record["image"]), record["label"], ctx.tok, ctx.class_names,
                                    ctx.caption_template)


def _caption(record: dict, key: str, ctx: BuildContext) -> sm.Sample:
    if not str(record.get("caption") or "").strip():
        raise sm.SkipSample("empty_caption", str(record.get("id", key)))
    return sm.caption_sample(key, ctx.image(record["image"]), record["caption"], ctx.tok)


def _text(record: dict, key: str, ctx: BuildContext) -> sm.Sample:
    return sm.text_sample(key, record["text"], ctx.tok)


def _interleaved(record: dict, key: str, ctx: BuildContext) -> sm.Sample:
    items = [ctx.image(v) if t == "image" else v for t, v in record["items"]]
    return sm.interleaved_sample(key, items, ctx.tok)


def _conversation(record: dict, key: str, ctx: BuildContext) -> sm.Sample:
    turns = record["turns"]
    # cheap checks first so a broken conversation does not cost image decoding
    sm.conversation_sample(key, [], turns, ctx.tok)
    return sm.conversation_sample(key, [ctx.image(p) for p in record["images"]], turns, ctx.tok)


KINDS: dict[str, SampleKind] = {k.name: k for k in (
    SampleKind("classification", src.classification_records, _classification,
               "a folder of class folders of images, a label file, or rows with image and label",
               _ROWS | {"folder", "csv"}),
    SampleKind("caption", src.caption_records, _caption,
               "img2dataset tars, or rows with image and caption (or text)", _ROWS | {"tar", "energon"}),
    SampleKind("interleaved", src.interleaved_records, _interleaved, "rows of documents of text and images"),
    SampleKind("text", src.text_records, _text, "rows with a text field"),
    SampleKind("conversation", src.conversation_records, _conversation,
               "rows of conversations (LLaVA, OpenAI or The Cauldron style) with their images",
               _ROWS | {"energon"}),
)}


def kind_names() -> list[str]:
    """The registered kinds, in registration order."""
    return list(KINDS)


def get_kind(name: str) -> SampleKind:
    """The registry entry of ``name``; ValueError naming the known kinds."""
    if name not in KINDS:
        raise ValueError(f"unknown source kind {name!r}; one of {', '.join(KINDS)}")
    return KINDS[name]


def iter_records(kind: str, inputs: list[str], image_root: str | None = None,
                 columns: src.Columns | None = None) -> Iterator[dict]:
    """Records of a source of ``kind`` (see sources.py), each with the ``input`` it came from.

    Missing inputs, and inputs the kind's reader does not take, raise naming the file before any is read.
    """
    entry = get_kind(kind)
    for item in inputs:
        if not Path(item).exists():
            raise FileNotFoundError(f"input {item} does not exist")
        check_input(kind, item, entry.inputs)
    return _tagged(entry, inputs, image_root, columns)


def _tagged(entry: SampleKind, inputs: list[str], image_root: str | None, columns: src.Columns | None
            ) -> Iterator[dict]:
    for item in inputs:  # one input at a time: every record knows its file (the skip-share check's unit)
        for record in entry.read([item], image_root, columns):
            record["input"] = item
            yield record


def check_has_records(kind: str, inputs: list[str], image_root: str | None = None,
                      columns: src.Columns | None = None) -> None:
    """UserInputError naming the first input that yields no record of ``kind``, and what the kind expects."""
    for item in inputs:
        if next(iter_records(kind, [item], image_root, columns), None) is None:
            raise UserInputError(f"{item}: no {kind} record in it; {kind} takes {get_kind(kind).expects}")


def build_sample(record: dict, key: str, ctx: BuildContext) -> sm.Sample:
    """One record -> a Sample (images decoded and resized), or SkipSample with the reason."""
    if "skip" in record:
        raise sm.SkipSample(record["skip"], record.get("error", ""))
    kind = KINDS.get(record["kind"])
    if kind is None:
        raise sm.SkipSample("bad_record", f"unknown kind {record['kind']!r}")
    return kind.build(record, key, ctx)
