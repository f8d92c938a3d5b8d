"""Raw source -> webdataset shards + index + stats.json (the library side of tools/preprocess_data.py).

Records are cut into shards of `shard_size` records in reading order, so shard k always holds the same
records: a resumed run skips every shard whose index exists (the index is renamed into place last) and
redoes the rest. With a held-out split the held-out records are cut the same way into OUTPUT/heldout/.
A job may run as N parts (a Slurm array, ``parts.py``): part I builds the shards k % N == I of both
folders, and when the last part finishes (or on ``merge``) stats.json sums them all. Bad samples are
skipped and counted by reason (and by input) in the shard's stats; whole-file problems (missing or
unreadable input, an input of which too much is skipped: ``skip_share.py``) raise naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
from tqdm import tqdm

from megatron_solo.config.data import PreprocessConfig
from megatron_solo.data.holdout import HELDOUT_DIR, plan_holdout
from megatron_solo.data.image import ImageError, load_resized
from megatron_solo.data.kinds import BuildContext, build_sample, check_has_records, iter_records
from megatron_solo.data.parts import (
    Part,
    check_split,
    finished_parts,
    missing_parts,
    resolve_part,
    write_marker,
)
from megatron_solo.data.samples import ImageSegment, SkipSample
from megatron_solo.data.shard_set import CONFIG_FILE
from megatron_solo.data.shards import INDEX_SUFFIX, ShardWriter, index_path, load_index, partial_files
from megatron_solo.data.skip_share import TooManySkips, add_inputs, check_skip_share, count_input
from megatron_solo.data.sources import Columns, load_class_names
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


def _build_or_skip(record: dict, key: str, ctx, cfg: PreprocessConfig, examples: list[str]):
    """(the record's sample, None), or (None, the reason it is skipped) with an example kept for stats.json."""
    try:
        sample = build_sample(record, key, ctx)
        if cfg.max_length is not None and len(sample) > cfg.max_length:
            raise SkipSample("too_long", f"{key}: {len(sample)} tokens > max_length {cfg.max_length}")
        return sample, None
    except SkipSample as skip:
        reason, why = skip.reason, str(skip)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        # a malformed record (wrong field types, missing keys) costs that record, not the job;
        # it is counted under its own reason so a systematic problem stays visible in stats.json
        reason, why = f"malformed_record:{type(err).__name__}", f"{type(err).__name__}: {err}"
    if len(examples) < _MAX_EXAMPLES:
        examples.append(_example(key, record, why))
    return None, reason


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
    by_input: dict = {}
    try:
        for position, record in records:
            sample, reason = _build_or_skip(record, f"{position:010d}", ctx, cfg, examples)
            count_input(by_input, record.get("input", ""), reason)
            if reason is not None:
                skipped[reason] += 1
                continue
            writer.write(sample)
            if "label" in record:
                labels.add(str(record["label"]))
            text_tokens += sample.text_tokens()
            vision_tokens += sample.image_tokens()
            images += sum(isinstance(s, ImageSegment) for s in sample.segments)
        stats = {"shard": writer.path.name, "records": len(records), "samples": len(writer),
                 "text_tokens": text_tokens, "vision_tokens": vision_tokens, "images": images,
                 "image_bytes": writer.image_bytes, "skipped": dict(skipped), "skip_examples": examples,
                 "inputs": by_input}
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


_IGNORED = ("workers", "max_skip_share")  # how a run goes, not what it makes: may change on a rerun


def _defaults() -> dict:
    """The options of PreprocessConfig that have a default, with it."""
    return {f.name: f.default for f in dataclasses.fields(PreprocessConfig) if f.default is not dataclasses.MISSING}


def _check_config(cfg: PreprocessConfig) -> None:
    """Refuse an output folder that holds another job's shards, or that is one of the inputs; writes nothing."""
    out = Path(cfg.output)
    for src in cfg.inputs:
        if Path(src).resolve() == out.resolve():
            raise UserInputError(f"--output {out} is also an --input; write the shards to another folder")
    path = out / CONFIG_FILE
    if path.exists():
        mine = {k: v for k, v in cfg.to_dict().items() if k not in _IGNORED}
        # an option added since that job was written is absent from its record: it ran with the default
        theirs = {**{k: v for k, v in _defaults().items() if k in mine}, **json.loads(path.read_text())}
        theirs = {k: v for k, v in theirs.items() if k not in _IGNORED}
        if theirs != mine:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise UserInputError(f"{out} holds shards of a different preprocessing job (differs in {diff}); "
                                 "use another output folder")


def _shard_number(name: str, prefix: str) -> int | None:
    """k of a file of shard k (``PREFIX-k.tar``, its index or their partial files); None for another file."""
    match = re.match(rf"{re.escape(prefix)}-(\d+)\.", name)
    return int(match.group(1)) if match else None


def _write_json(path: Path, data: dict) -> None:
    """Write atomically: parts finishing together may write the same file at once."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _open_folders(cfg: PreprocessConfig, folders: list[Path], part: Part | None) -> None:
    """Create the output folders with their config, and remove this run's own partial shards there."""
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        # beside the held-out shards too: a folder of shards is self-describing (patch size checks)
        if not (folder / CONFIG_FILE).exists():
            _write_json(folder / CONFIG_FILE, cfg.to_dict())
        for stale in partial_files(folder, cfg.prefix):  # an interrupted run's, never anyone else's
            if part is None or part.owns(_shard_number(stale.name, cfg.prefix) or 0):  # others may be writing
                stale.unlink()


def _columns(cfg: PreprocessConfig) -> Columns | None:
    return Columns(cfg.image_column, cfg.text_column) if cfg.image_column or cfg.text_column else None


def _build(cfg: PreprocessConfig, folders: list[Path], held: np.ndarray | None, part: Part | None,
           progress: bool) -> int:
    """Build every missing shard this run owns; returns how many were there already."""
    records = iter_records(cfg.kind, cfg.inputs, cfg.image_root, _columns(cfg))
    bar = tqdm(unit="rec", desc=f"preprocess {cfg.kind}" + (f" part {part}" if part else ""),
               disable=not progress)
    done_before = 0
    pool = mp.get_context("fork").Pool(cfg.workers, initializer=_setup, initargs=(cfg,)) if cfg.workers > 0 else None
    if pool is None:
        _setup(cfg)
    pending: list = []
    try:
        for which, k, chunk in _chunks(records, cfg.shard_size, held):
            if part is not None and not part.owns(k):
                continue  # another part's shard: its records were only read to keep the numbering
            if index_path(shard_path(folders[which], cfg.prefix, k)).exists():
                done_before += 1
                bar.update(len(chunk))
            elif pool is None:
                process_shard(k, chunk, folders[which])
                bar.update(len(chunk))
            else:
                pending.append((len(chunk), pool.apply_async(process_shard, (k, chunk, folders[which]))))
                while len(pending) >= 2 * cfg.workers:  # bound memory: records wait in the main process
                    n, result = pending.pop(0)
                    result.get()
                    bar.update(n)
        for n, result in pending:
            result.get()
            bar.update(n)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        bar.close()
    return done_before


def _finish(cfg: PreprocessConfig, folders: list[Path], split: dict | None, **extra) -> dict:
    """stats.json of the whole dataset (and of its held-out part), once every shard of it is there."""
    stats = {**aggregate_stats(cfg.output), **extra}
    try:
        check_skip_share(_with_heldout(stats, folders), cfg.max_skip_share)
    except TooManySkips as err:
        err.stats = stats  # what was counted, for a caller that reports more than the one line
        raise
    if split is not None:
        heldout = aggregate_stats(folders[1])
        _write_json(folders[1] / STATS_FILE, heldout)
        stats["holdout"] = split
        stats["heldout"] = heldout
    _write_json(Path(cfg.output) / STATS_FILE, stats)
    return stats


def _with_heldout(stats: dict, folders: list[Path]) -> dict:
    """Per-input counts over both folders (a held-out record is a record of its input too)."""
    by_input: dict = {}
    add_inputs(by_input, stats["inputs"])
    if len(folders) > 1:
        add_inputs(by_input, aggregate_stats(folders[1])["inputs"])
    return by_input


def preprocess(cfg: PreprocessConfig, progress: bool = True, environ: Mapping[str, str] | None = None) -> dict:
    """Run a whole preprocessing job or one part of it (resumable); returns the stats (also written to disk).

    With ``cfg.holdout`` the held-out records (see ``data/holdout.py``) go to shards in OUTPUT/heldout/ and
    stats.json reports both parts (the held-out one under "heldout"). The part is ``cfg.part``, else the Slurm
    array task's in ``environ`` (default: this process's environment), else the whole job.
    """
    folders = [Path(cfg.output)] + ([Path(cfg.output) / HELDOUT_DIR] if cfg.holdout else [])
    _check_config(cfg)
    if cfg.merge:
        return _merge(cfg, folders)
    part = resolve_part(cfg.part, os.environ if environ is None else environ)
    check_split(cfg.output, part.count if part else None)
    if part is not None and part.marker(cfg.output).exists():
        stats = json.loads(part.marker(cfg.output).read_text())  # finished before: nothing to redo
        return _after_part(cfg, folders, part, {**stats, "finished_before": True})
    load_class_names(cfg.class_names)  # a broken class-name map is a whole-job error: fail before work
    # refuses inputs no reader takes, or that hold no record, before anything is made
    check_has_records(cfg.kind, cfg.inputs, cfg.image_root, _columns(cfg))
    held, split = None, None
    if cfg.holdout:  # every part scans the whole source: the split is the one-process run's
        held, split = plan_holdout(iter_records(cfg.kind, cfg.inputs, cfg.image_root, _columns(cfg)),
                                   cfg.holdout, cfg.holdout_seed, progress)
    _open_folders(cfg, folders, part)  # only once every check passed: a refused run leaves nothing behind
    done_before = _build(cfg, folders, held, part, progress)
    if part is None:
        return _finish(cfg, folders, split, resumed_shards=done_before)
    # the skip-share check waits for the whole job (_finish): a part holds a slice of each input, which may by
    # chance be all bad
    stats = aggregate_stats(cfg.output, cfg.prefix, part)
    stats.update(part=str(part), resumed_shards=done_before, holdout=split)
    write_marker(part, cfg.output, stats)
    return _after_part(cfg, folders, part, stats)


def _after_part(cfg: PreprocessConfig, folders: list[Path], part: Part, stats: dict) -> dict:
    """A part's stats; the last part to finish also writes the whole dataset's stats.json."""
    count, missing = missing_parts(cfg.output)
    if not missing:
        _finish(cfg, folders, stats.get("holdout"))
    return {**stats, "parts_missing": missing}


def _merge(cfg: PreprocessConfig, folders: list[Path]) -> dict:
    """The whole dataset's stats.json from its finished parts; UserInputError naming the parts not finished."""
    count, missing = missing_parts(cfg.output)
    if count == 0:
        raise UserInputError(f"--merge: {cfg.output} holds no finished part (no {cfg.output}/parts/part-*.json); "
                             "run the parts (--part I/N or a Slurm array) first")
    if missing:
        raise UserInputError(f"--merge: part(s) {', '.join(map(str, missing))} of {count} of {cfg.output} have not "
                             "finished; rerun them (a rerun redoes only their missing shards)")
    split = next(iter(finished_parts(cfg.output).values())).get("holdout")
    return _finish(cfg, folders, split)


def aggregate_stats(output: str | os.PathLike, prefix: str | None = None, part: Part | None = None) -> dict:
    """Sum of the per-shard stats of every finished shard in `output` (only ``part``'s shards when given)."""
    total: dict = {"shards": 0, "records": 0, "samples": 0, "text_tokens": 0, "vision_tokens": 0, "images": 0,
                   "image_bytes": 0, "skipped": Counter(), "skip_examples": [], "inputs": {}}
    labels: set[str] = set()
    for idx in sorted(Path(output).glob(f"*{INDEX_SUFFIX}")):
        number = _shard_number(idx.name, prefix) if part is not None else None
        if part is not None and (number is None or not part.owns(number)):
            continue
        tar = idx.with_name(idx.name[: -len(INDEX_SUFFIX)] + ".tar")
        s = load_index(tar, check=False).stats
        total["shards"] += 1
        for key in ("records", "samples", "text_tokens", "vision_tokens", "images", "image_bytes"):
            total[key] += s.get(key, 0)
        total["skipped"].update(s.get("skipped", {}))
        add_inputs(total["inputs"], s.get("inputs", {}))
        labels.update(s.get("labels", []))
        total["skip_examples"] += s.get("skip_examples", [])[: max(0, 20 - len(total["skip_examples"]))]
    total["skipped"] = dict(sorted(total["skipped"].items()))
    total["skipped_total"] = sum(total["skipped"].values())
    total["tokens"] = total["text_tokens"] + total["vision_tokens"]
    total["vision_share"] = total["vision_tokens"] / max(1, total["tokens"])
    if labels:
        total["labels"] = sorted(labels)
    return total
