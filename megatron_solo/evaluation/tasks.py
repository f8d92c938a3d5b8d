"""Validation loss per source, closed-set classification and captions: each a function of a backend.

Every task returns a JSON-ready dict with its metrics, the images it read and the seconds it took.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_solo.data.holdout import HELDOUT_DIR
from megatron_solo.data.image import ImageError
from megatron_solo.data.preprocess import aggregate_stats
from megatron_solo.data.shard_set import CONFIG_FILE, preprocess_config
from megatron_solo.data.sources import load_class_names
from megatron_solo.evaluation.documents import Doc, continuation_doc, prompt_doc
from megatron_solo.evaluation.errors import EvaluationError
from megatron_solo.evaluation.heldout import HeldOutSet, truncate
from megatron_solo.evaluation.scoring import Backend, generate_documents, score_documents


@dataclass
class Settings:
    """How much to evaluate and how to batch it."""

    max_samples: int | None = None  # per source / task; None: all
    batch_tokens: int = 8192  # padded tokens per batch
    max_batch: int = 64  # documents per batch
    progress: bool = True


def timed(result: dict, start: float, images: int) -> dict:
    """``result`` with the images read, the seconds since ``start`` and their rate."""
    seconds = time.perf_counter() - start
    result.update(images=images, seconds=round(seconds, 3), images_per_s=round(images / max(seconds, 1e-9), 3))
    return result


def validation_loss(backend: Backend, path: str, name: str, settings: Settings) -> dict:
    """Mean token loss over the target tokens of each held-out document, evaluated on its own (not packed)."""
    start = time.perf_counter()
    data = HeldOutSet(path, backend.processor.patch_size, settings.max_samples)
    limit, vpatch = backend.max_positions, backend.tokenizer.vpatch_id
    full = data.lengths()
    lengths = [min(n, limit) for n in full]
    scores = score_documents(backend, lengths, lambda i: truncate(data.load(i), limit, vpatch)[0],
                             batch_tokens=settings.batch_tokens, max_batch=settings.max_batch, sort=True,
                             desc=f"val loss {name}", progress=settings.progress)
    tokens = sum(n for _, n in scores)
    if tokens == 0:
        raise EvaluationError(f"{path}: its {len(data)} documents have no loss tokens")
    images = int(data.shards.block_ptr[len(data)] - data.shards.block_ptr[0])
    return timed({"path": str(path), "loss": -sum(s for s, _ in scores) / tokens, "tokens": tokens,
                   "documents": len(data), "truncated": sum(n > limit for n in full)}, start, images)


def _class_names_file(path: str, given: str | None, config: dict) -> Path | None:
    if given:
        return Path(given)
    stored = config.get("class_names")
    if not stored:
        return None
    stored = Path(stored)
    # a relative path was relative to where preprocessing ran: try there, then beside the shards
    for candidate in (stored, Path(path) / stored, Path(path).parent / stored):
        if candidate.is_file():
            return candidate
    raise EvaluationError(f"--classify {path}: class-name file {stored} (from {CONFIG_FILE}) not found; "
                          "pass --class-names")


def _stored_labels(path: str) -> list[str]:
    """Labels the shards of ``path`` were built from, with those of its training part when it is a held-out folder."""
    folders = [Path(path)]
    if Path(path).name == HELDOUT_DIR and (Path(path).parent / CONFIG_FILE).is_file():
        folders.append(Path(path).parent)
    labels: set[str] = set()
    for folder in folders:
        if folder.is_dir():
            labels.update(aggregate_stats(folder).get("labels", []))
    return sorted(labels)


def class_names_for(path: str, given: str | None, config: dict) -> tuple[dict[str, str], str]:
    """The label -> name map of a classification set and where it came from.

    Without a class-name file (given or recorded at preprocessing) a class is named by its label, as the
    preprocessing named it, and the classes are the labels recorded in the shards' indexes.
    """
    names_file = _class_names_file(path, given, config)
    if names_file is None:
        labels = _stored_labels(path)
        if not labels:
            raise EvaluationError(f"--classify {path}: no class-name file in its {CONFIG_FILE} and no "
                                  "labels recorded in its shards; pass --class-names")
        return {label: label for label in labels}, f"the labels of {path}"
    try:
        names = load_class_names(names_file)
    except (ValueError, OSError) as err:
        raise EvaluationError(f"{names_file}: cannot read class names ({err})") from err
    return names, str(names_file)


def caption_candidates(names: dict[str, str], template: str, tok) -> tuple[list[list[int]], list[str]]:
    """Distinct caption token ids (caption + </s>) made from the class names, and the name(s) of each."""
    ids_of: dict[tuple[int, ...], int] = {}
    labels: list[str] = []
    for name in names.values():
        try:
            caption = template.format(name.strip()).strip()
        except (IndexError, KeyError, ValueError) as err:
            raise EvaluationError(f"caption template {template!r} cannot be filled with a class name ({err})") from err
        if not caption:
            continue
        ids = tuple(tok.encode(caption) + [tok.eos_id])
        if ids in ids_of:
            labels[ids_of[ids]] += f" / {name.strip()}"
        else:
            ids_of[ids] = len(labels)
            labels.append(name.strip())
    return [list(k) for k in ids_of], labels


def classification(backend: Backend, path: str, class_names: str | None, template: str | None,
                   settings: Settings) -> dict:
    """Top-1 / top-5 accuracy of ranking every class's caption by its summed log-likelihood after ``<s> [img]``."""
    start = time.perf_counter()
    config = preprocess_config(path)
    names, names_file = class_names_for(path, class_names, config)
    template = template if template is not None else config.get("caption_template") or "{}"
    data = HeldOutSet(path, backend.processor.patch_size, settings.max_samples)
    tok = backend.tokenizer
    cands, labels = caption_candidates(names, template, tok)
    if not cands:
        raise EvaluationError(f"{names_file}: no class names")
    index = {tuple(c): k for k, c in enumerate(cands)}
    prefix_len, truth, keys = [], [], []
    for i in range(len(data)):
        sample = data.text_only(i)
        first = int(np.argmax(sample.doc.target)) if sample.doc.target.any() else len(sample.doc)
        if first == len(sample.doc) or not sample.doc.target[first:].all() or not sample.blocks:
            raise EvaluationError(f"{path}: sample {sample.key} ({sample.kind}) is not <s> [image] caption </s>")
        k = index.get(tuple(sample.doc.ids[first:].tolist()))
        if k is None:
            caption = tok.decode(sample.doc.ids[first:-1].tolist())
            raise EvaluationError(f"{path}: sample {sample.key}: its caption {caption!r} is none of the {len(cands)} "
                                  f"captions made from {names_file} with template {template!r} (wrong template or "
                                  f"class names?)")
        prefix_len.append(first)
        truth.append(k)
        keys.append(sample.key)
    n, K = len(data), len(cands)

    def load(j: int) -> Doc:
        i, k = divmod(j, K)
        doc = data.load(i).doc
        return continuation_doc(doc.ids[:prefix_len[i]], cands[k], doc.patches)

    lengths = [prefix_len[i] + len(c) for i in range(n) for c in cands]
    scores = score_documents(backend, lengths, load, batch_tokens=settings.batch_tokens,
                             max_batch=settings.max_batch, sort=False, desc="classify", progress=settings.progress)
    table = np.array([s for s, _ in scores], dtype=np.float64).reshape(n, K)
    ranked = np.argsort(-table, axis=1, kind="stable")[:, :5]
    top1 = float(np.mean(ranked[:, 0] == np.array(truth))) if n else 0.0
    top5 = float(np.mean([truth[i] in ranked[i] for i in range(n)])) if n else 0.0
    predictions = [{"key": keys[i], "true": labels[truth[i]], "top5": [labels[k] for k in ranked[i]]}
                   for i in range(n)]
    return timed({"path": str(path), "class_names": str(names_file), "caption_template": template,
                   "samples": n, "classes": K, "top1": top1, "top5": top5, "predictions": predictions}, start, n)


def encode_image_prompt(processor, prompt: str, images: list[str], chat: bool, where: str):
    """(ids, patches) of a prompt about ``images`` (SOLO's image rule); EvaluationError naming a bad image."""
    try:
        return processor.encode_one(prompt, images, chat)
    except (ImageError, OSError) as err:
        raise EvaluationError(f"{where}: {err}") from err


def captions(backend: Backend, images: list[str], max_new_tokens: int, settings: Settings) -> dict:
    """Greedy captions of ``images`` with the plain template ``<s> [img]``."""
    start = time.perf_counter()
    prompts = [encode_image_prompt(backend.processor, "", [img], False, img) for img in images]
    tok = backend.tokenizer
    out = generate_documents(backend, [len(ids) for ids, _ in prompts], lambda i: prompt_doc(*prompts[i]),
                             max_new_tokens, tok.eos_id, batch_tokens=settings.batch_tokens,
                             max_batch=settings.max_batch, desc="captions", progress=settings.progress)
    items = [{"image": str(img), "caption": backend.processor.decode(ids).strip(), "tokens": ids}
             for img, ids in zip(images, out)]
    return timed({"items": items}, start, len(images))
