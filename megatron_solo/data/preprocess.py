"""Raw source -> webdataset shards + index + stats.json (the library side of tools/preprocess_data.py).

Records are cut into shards of `shard_size` records in reading order, so shard k always holds the same
records: a resumed run skips every shard whose index exists (the index is renamed into place last) and
redoes the rest. With a held-out split the held-out records are cut the same way into OUTPUT/heldout/. Bad samples are skipped and counted by reason in the shard's stats; whole-file problems
(missing input, unreadable JSON file) raise naming the file before any shard is written.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from megatron_solo.config.data import PreprocessConfig
from megatron_solo.data.holdout import HELDOUT_DIR, plan_holdout
from megatron_solo.data.image import ImageError, load_resized
from megatron_solo.data.kinds import BuildContext, build_sample, iter_records
from megatron_solo.data.samples import ImageSegment, SkipSample
from megatron_solo.data.shard_set import CONFIG_FILE
from megatron_solo.data.shards import INDEX_SUFFIX, ShardWriter, index_path, load_index, partial_files
from megatron_solo.data.sources import load_class_names
from megatron_solo.errors import UserInputError
from megatron_solo.vocab import SoloTokenizer

STATS_FILE = "stats.json"
_MAX_EXAMPLES = 5
_worker: dict = {}  # per-process state: config, tokenizer, class names


def _setup(cfg: PreprocessConfig) -> None:
    tok = SoloTokenizer(cfg.tokenizer, close_with_vision=cfg.close_with_vision)
    _worker["cfg"] = cfg
    _worker["ctx"] = BuildContext(tok=tok, image=lambda source: _image(source, cfg),
                                  class_names=load_class_names(cfg.class_names),
                                  caption_template=cfg.caption_template)


def _image(source, cfg: PreprocessConfig) -> ImageSegment:
    try:
        img = load_resized(source, cfg.patch_size, cfg.max_side, cfg.max_aspect, fast_jpeg=cfg.fast_jpeg_decode)
    except ImageError as err:
        # name the image itself: a record (an interleaved document, a conversation) may hold several
        named = isinstance(source, str) and source not in err.detail
        raise SkipSample(err.reason, f"{source}: {err.detail}" if named else err.detail) from err
    return ImageSegment(img, cfg.patch_size)


def _example(key: str, record: dict, message: str) -> str:
    """A skip example naming the record and where it came from (file:line, tar:key or image path)."""
    origin = record.get("origin")
    where = f"record {key}" + (f" from {origin}" if origin and origin not in message else "")
    return f"{message} ({where})"[:400]


def shard_path(output: str | os.PathLike, prefix: str, k: int) -> Path:
    """Path of shard k."""
    return Path(output) / f"{prefix}-{k:06d}.tar"


def process_shard(k: int, records: list[tuple[int, dict]], folder: str | os.PathLike,
                  cfg: PreprocessConfig | None = None) -> dict:
    """Build and write shard k of `folder` from its (position, record) pairs; returns its stats (also in its index).

    A sample's key is its record's position in the source, so keys are unique across OUTPUT and OUTPUT/heldout.
    """
    if cfg is not None and _worker.get("cfg") is not cfg:
        _setup(cfg)
    cfg, ctx = _worker["cfg"], _worker["ctx"]
    writer = ShardWriter(shard_path(folder, cfg.prefix, k), ctx.tok.vision_ids, cfg.image_format,
                         cfg.image_quality)
    skipped: Counter = Counter()
    examples: list[str] = []
    labels: set[str] = set()  # classification: the class set, for evaluation without a class-name map
    text_tokens = vision_tokens = images = 0
    try:
        for position, record in records:
            key = f"{position:010d}"
            try:
                sample = build_sample(record, key, ctx)
                if cfg.max_length is not None and len(sample) > cfg.max_length:
                    raise SkipSample("too_long", f"{key}: {len(sample)} tokens > max_length {cfg.max_length}")
            except SkipSample as skip:
                skipped[skip.reason] += 1
                if len(examples) < _MAX_EXAMPLES:
                    examples.append(_example(key, record, str(skip)))
                continue
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                # a malformed record (wrong field types, missing keys) costs that record, not the job;
                # it is counted under its own reason so a systematic problem stays visible in stats.json
                skipped[f"malformed_record:{type(err).__name__}"] += 1
                if len(examples) < _MAX_EXAMPLES:
                    examples.append(_example(key, record, f"{type(err).__name__}: {err}"))
                continue
            writer.write(sample)
            if "label" in record:
                labels.add(str(record["label"]))
            text_tokens += sample.text_tokens()
            vision_tokens += sample.image_tokens()
            images += sum(isinstance(s, ImageSegment) for s in sample.segments)
        stats = {"shard": writer.path.name, "records": len(records), "samples": len(writer),
                 "text_tokens": text_tokens, "vision_tokens": vision_tokens, "images": images,
                 "image_bytes": writer.image_bytes, "skipped": dict(skipped), "skip_examples": examples}
        if labels:
            stats["labels"] = sorted(labels)
        writer.close(stats)
    except BaseException:
        writer.abort()
        raise
    return stats


def _chunks(records: Iterator[dict], size: int, held: np.ndarray | None
            ) -> Iterator[tuple[int, int, list[tuple[int, dict]]]]:
    """(part, shard number, [(position, record)]): part 0 = training records, 1 = held out, each cut in order."""
    buffers: list[list[tuple[int, dict]]] = [[], []]
    shards = [0, 0]
    for position, record in enumerate(records):
        if held is not None and position >= len(held):
            raise UserInputError(f"the source grew while it was being preprocessed (record {position} was not "
                                 "there when the held-out split was chosen); rerun on a stable copy")
        part = int(held[position]) if held is not None else 0
        buffers[part].append((position, record))
        if len(buffers[part]) == size:
            yield part, shards[part], buffers[part]
            buffers[part] = []  # the full list was handed out (maybe to a worker): start a new one
            shards[part] += 1
    for part in (0, 1):
        if buffers[part]:
            yield part, shards[part], buffers[part]


def _check_config(cfg: PreprocessConfig) -> None:
    """Refuse an output folder that holds another job's shards, or that is one of the inputs; writes nothing."""
    out = Path(cfg.output)
    for src in cfg.inputs:
        if Path(src).resolve() == out.resolve():
            raise UserInputError(f"--output {out} is also an --input; write the shards to another folder")
    path = out / CONFIG_FILE
    if path.exists():
        mine = {k: v for k, v in cfg.to_dict().items() if k != "workers"}
        theirs = {k: v for k, v in json.loads(path.read_text()).items() if k != "workers"}
        if theirs != mine:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise UserInputError(f"{out} holds shards of a different preprocessing job (differs in {diff}); "
                                 "use another output folder")


def _open_folders(cfg: PreprocessConfig, folders: list[Path]) -> None:
    """Create the output folders with their config, and remove this tool's own partial shards there."""
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        # beside the held-out shards too: a folder of shards is self-describing (patch size checks)
        if not (folder / CONFIG_FILE).exists():
            (folder / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))
        for stale in partial_files(folder, cfg.prefix):  # an interrupted run's, never anyone else's
            stale.unlink()


def preprocess(cfg: PreprocessConfig, progress: bool = True) -> dict:
    """Run a whole preprocessing job (resumable); returns the aggregated stats also written to stats.json.

    With ``cfg.holdout`` the held-out records (see ``data/holdout.py``) go to shards in OUTPUT/heldout/ and
    stats.json reports both parts (the held-out one under "heldout").
    """
    folders = [Path(cfg.output)] + ([Path(cfg.output) / HELDOUT_DIR] if cfg.holdout else [])
    _check_config(cfg)
    load_class_names(cfg.class_names)  # a broken class-name map is a whole-job error: fail before work
    held, split = None, None
    if cfg.holdout:
        held, split = plan_holdout(iter_records(cfg.kind, cfg.inputs, cfg.image_root), cfg.holdout,
                                   cfg.holdout_seed, progress)
    records = iter_records(cfg.kind, cfg.inputs, cfg.image_root)
    _open_folders(cfg, folders)  # only once every check passed: a refused run leaves nothing behind
    bar = tqdm(unit="rec", desc=f"preprocess {cfg.kind}", disable=not progress)
    done_before = 0
    if cfg.workers <= 0:
        _setup(cfg)
        for part, k, chunk in _chunks(records, cfg.shard_size, held):
            if index_path(shard_path(folders[part], cfg.prefix, k)).exists():
                done_before += 1
            else:
                process_shard(k, chunk, folders[part])
            bar.update(len(chunk))
    else:
        with mp.get_context("fork").Pool(cfg.workers, initializer=_setup, initargs=(cfg,)) as pool:
            pending = []
            for part, k, chunk in _chunks(records, cfg.shard_size, held):
                if index_path(shard_path(folders[part], cfg.prefix, k)).exists():
                    done_before += 1
                    bar.update(len(chunk))
                    continue
                pending.append((len(chunk), pool.apply_async(process_shard, (k, chunk, folders[part]))))
                while len(pending) >= 2 * cfg.workers:  # bound memory: records wait in the main process
                    n, result = pending.pop(0)
                    result.get()
                    bar.update(n)
            for n, result in pending:
                result.get()
                bar.update(n)
    bar.close()
    stats = aggregate_stats(cfg.output)
    stats["resumed_shards"] = done_before
    if split is not None:
        heldout = aggregate_stats(folders[1])
        (folders[1] / STATS_FILE).write_text(json.dumps(heldout, indent=2))
        stats["holdout"] = split
        stats["heldout"] = heldout
    (Path(cfg.output) / STATS_FILE).write_text(json.dumps(stats, indent=2))
    return stats


def aggregate_stats(output: str | os.PathLike) -> dict:
    """Sum of the per-shard stats of every finished shard in `output`."""
    total: dict = {"shards": 0, "records": 0, "samples": 0, "text_tokens": 0, "vision_tokens": 0, "images": 0,
                   "image_bytes": 0, "skipped": Counter(), "skip_examples": []}
    labels: set[str] = set()
    for idx in sorted(Path(output).glob(f"*{INDEX_SUFFIX}")):
        tar = idx.with_name(idx.name[: -len(INDEX_SUFFIX)] + ".tar")
        s = load_index(tar, check=False).stats
        total["shards"] += 1
        for key in ("records", "samples", "text_tokens", "vision_tokens", "images", "image_bytes"):
            total[key] += s.get(key, 0)
        total["skipped"].update(s.get("skipped", {}))
        labels.update(s.get("labels", []))
        total["skip_examples"] += s.get("skip_examples", [])[: max(0, 20 - len(total["skip_examples"]))]
    total["skipped"] = dict(sorted(total["skipped"].items()))
    total["skipped_total"] = sum(total["skipped"].values())
    total["tokens"] = total["text_tokens"] + total["vision_tokens"]
    total["vision_share"] = total["vision_tokens"] / max(1, total["tokens"])
    if labels:
        total["labels"] = sorted(labels)
    return total
