"""Datasets prepared with ``energon prepare`` (webdataset shards + ``.nv-meta/``) as a source.

Read with the megatron-energon package itself (the optional extra ``pip install megatron_solo[energon]``),
so its split, field map or sample loader in ``dataset.yaml`` apply as they do in Megatron-LM's multimodal
path. The ``train`` split is read once, in energon's own deterministic (non-training) order, one
process, no shuffling; images are kept as their stored bytes (energon's decoder would hand out tensors,
and SOLO's resize must start from the file). CaptioningSample becomes a caption record, VQASample a
one-turn conversation (context -> first answer); another sample type is refused naming it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from megatron_solo.data.input_types import UnreadableInput

SPLIT = "train"
_TYPES = {"caption": "CaptioningSample", "conversation": "VQASample"}


def _energon():
    try:
        import webdataset.autodecode
        from megatron.energon import WorkerConfig
        from megatron.energon.metadataset.loader import load_dataset
    except ImportError as err:
        raise UnreadableInput("reading an energon dataset needs megatron-energon (pip install "
                              f"'megatron_solo[energon]'): {err}") from None
    return webdataset.autodecode, WorkerConfig, load_dataset


class _EncodedImages:
    """An energon sample decoder that decodes text and JSON members but leaves images as their bytes."""

    def __init__(self, autodecode) -> None:
        self._decode = autodecode.Decoder([])  # only webdataset's basic handlers: txt, json, cls, ...

    def __call__(self, sample: dict) -> dict:
        return self._decode(sample)

    def decode(self, fname: str, raw: bytes):
        return self({"__key__": "x", fname: raw})[fname]

    def config(self) -> dict:
        return {"image_decode": "stored bytes"}


def _record(sample, kind: str, where: str) -> dict:
    image = sample.image
    if not isinstance(image, (bytes, bytearray)):
        return {"skip": "missing_image", "error": f"{where}: image is {type(image).__name__}, not stored bytes"}
    if kind == "caption":
        caption = sample.caption.decode("utf-8", "replace") if isinstance(sample.caption, bytes) else sample.caption
        return {"kind": "caption", "image": bytes(image), "caption": caption or "", "id": sample.__key__,
                "origin": where}
    answers = sample.answers if isinstance(sample.answers, list) else [sample.answers]
    turns = [{"role": "user", "content": sample.context}, {"role": "assistant", "content": answers[0] if answers
                                                           else ""}]
    return {"kind": "conversation", "images": [bytes(image)], "turns": turns, "id": sample.__key__, "origin": where}


def energon_records(folder: Path, kind: str) -> Iterator[dict]:
    """The records of an energon-prepared dataset's train split, for ``kind`` caption or conversation."""
    autodecode, WorkerConfig, load_dataset = _energon()
    worker = WorkerConfig(rank=0, world_size=1, num_workers=0)
    loaded = load_dataset(str(folder)).get_datasets(training=False, split_part=SPLIT, worker_config=worker,
                                                    decoder=_EncodedImages(autodecode))
    for entry in loaded.datasets:
        sample_type = getattr(entry.dataset, "__sample_type__", None)
        name = getattr(sample_type, "__name__", str(sample_type))
        if name != _TYPES.get(kind):
            raise UnreadableInput(f"{folder}: an energon dataset of {name}; the {kind} reader takes "
                                  f"{_TYPES.get(kind, 'no energon sample type')}")
        dataset = entry.dataset.build()
        worker.worker_activate(0)
        try:
            for sample in dataset:
                yield _record(sample, kind, f"{folder}:{sample.__key__}")
        finally:
            worker.worker_deactivate()
