"""Export a training checkpoint (saved at any TP/PP, by either layer spec) to Hugging Face formats.

The format's adapter (:mod:`megatron_solo.hf.adapters`: ``fuyu`` for stock transformers, ``solo``
for the SOLO-7B release layout) names the tensors and writes config.json. The checkpoint is
loaded at TP1 PP1 in one worker process (dist_checkpointing reshards), then written layer by
layer into safetensors shards with an index.

The export is built in a hidden folder beside ``out_dir`` and renamed into place when complete.
An existing ``out_dir`` is replaced only when it is a previous export (it holds ``solo_export.json``);
anything else, or a folder holding the checkpoint itself, is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from megatron_solo.checkpoint.layout import resolve_checkpoint
from megatron_solo.checkpoint.metadata import TOKENIZER_DIR, check_checkpoint, model_config, read_metadata
from megatron_solo.checkpoint.model_io import load_solo_model
from megatron_solo.checkpoint.names import canonical_state_dict
from megatron_solo.config.job import recorded_template
from megatron_solo.config.model import SoloModelConfig
from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.hf.adapters import FORMATS, decoder_adapter, exporter
from megatron_solo.hf.generate import EXPORT_META
from megatron_solo.hf.importer import quiet_workers
from megatron_solo.hf.processor import SoloProcessor
from megatron_solo.hf.source import INDEX_FILE, ConversionError
from megatron_solo.hf.workers import run_workers
from megatron_solo.platform import init_parallel
from megatron_solo.vocab import TokenizerMismatchError, load_tokenizer

__all__ = ["EXPORT_META", "FORMATS", "export_checkpoint"]


def file_mode() -> int:
    """The mode a new file gets from ``open`` under this process's umask (0644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class SafetensorsWriter:
    """Collect tensors and write safetensors shards of about ``max_bytes`` plus the index json."""

    def __init__(self, out_dir: Path, max_bytes: int, dtype: torch.dtype | None):
        self.out_dir, self.max_bytes, self.dtype = out_dir, max_bytes, dtype
        self.pending: dict[str, torch.Tensor] = {}
        self.size, self.files, self.weight_map, self.total = 0, [], {}, 0

    def add(self, name: str, t: torch.Tensor) -> None:
        """Queue one tensor (converted to the export dtype, contiguous)."""
        t = t.detach().to(self.dtype) if self.dtype is not None else t.detach()
        if t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # a view into a larger tensor: safetensors refuses shared storage
        self.pending[name] = t.contiguous()
        self.size += t.numel() * t.element_size()
        if self.size >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the queued tensors as one shard."""
        from safetensors.torch import save_file

        if not self.pending:
            return
        fname = f"model-{len(self.files) + 1:05d}.safetensors"
        save_file(self.pending, str(self.out_dir / fname), metadata={"format": "pt"})
        os.chmod(self.out_dir / fname, file_mode())  # safetensors writes 0600; the export's other files follow umask
        self.files.append(fname)
        self.weight_map.update({k: fname for k in self.pending})
        self.total += self.size
        self.pending, self.size = {}, 0

    def finish(self) -> None:
        """Flush, give shards their final names and write model.safetensors.index.json."""
        self.flush()
        n = len(self.files)
        rename = {f: f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i, f in enumerate(self.files)}
        for old, new in rename.items():
            os.replace(self.out_dir / old, self.out_dir / new)
        index = {"metadata": {"total_size": self.total}, "weight_map": {k: rename[v] for k, v in self.weight_map.items()}}
        (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2))


def write_weights(sd: dict[str, torch.Tensor], cfg: SoloModelConfig, fmt: str, writer: SafetensorsWriter,
                  progress: bool = False) -> None:
    """Stream the full TP1 canonical megatron state dict into ``writer`` in format ``fmt``."""
    from tqdm import tqdm

    tensors = exporter(fmt).export_tensors(sd, cfg, decoder_adapter(cfg))
    for name, t in tqdm(tensors, desc=f"export {fmt}", disable=not progress, unit="tensor"):
        writer.add(name, t)
    writer.finish()


def _export_worker(ckpt: str, out_dir: str, meta_path: str, fmt: str, max_bytes: int,
                   dtype: str | None, progress: bool) -> None:
    quiet_workers()
    parallel = ParallelConfig()
    init_parallel(parallel, seed=0)
    chunks, cfg = load_solo_model(ckpt, parallel, meta_path, in_place=True)
    sd = canonical_state_dict({k: v for k, v in chunks[0].state_dict().items() if torch.is_tensor(v)})
    writer = SafetensorsWriter(Path(out_dir), max_bytes, getattr(torch, dtype) if dtype else None)
    write_weights(sd, cfg, fmt, writer, progress)


def write_config(out_dir: Path, top: dict, tok) -> None:
    """config.json (``top``) and generation_config.json of the exported model."""
    from transformers import GenerationConfig

    (out_dir / "config.json").write_text(json.dumps(top, indent=2, sort_keys=True))
    GenerationConfig(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id).save_pretrained(
        str(out_dir))


EXPORT_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")  # weight files of any export
IN_PROGRESS = ".solo_export_in_progress"  # marks a hidden build folder as ours until it is published


def _check_target(out: Path, root: Path, ckpt: Path) -> None:
    """Refuse an output folder that would overwrite the checkpoint or files that are not our export."""
    out_r, protected = out.resolve(), {root.resolve(), ckpt.resolve()}
    if any(p == out_r or out_r in p.parents for p in protected) or ckpt.resolve() in out_r.parents:
        raise ConversionError(f"--out {out} would replace or write into the checkpoint {ckpt}; choose another folder")
    if out.exists() and not _ours(out, EXPORT_META):
        raise ConversionError(f"--out {out} exists and is not a previous export (no {EXPORT_META}); "
                              "choose a new folder or remove it yourself")


def _ours(path: Path, *markers: str) -> bool:
    """Whether ``path`` is a real folder that is empty or holds one of ``markers`` (files only we write)."""
    if path.is_symlink() or not path.is_dir():
        return False
    return any((path / m).is_file() for m in markers) or not any(path.iterdir())


def _remove_leftover(path: Path, *markers: str) -> None:
    """Remove a hidden folder an interrupted export of ours left; refuse one that is not ours."""
    if not (path.exists() or path.is_symlink()):
        return
    if not _ours(path, *markers):
        raise ConversionError(f"{path} exists and was not written by an export; remove or rename it yourself")
    shutil.rmtree(path)


def _publish(tmp: Path, out: Path) -> None:
    """Move a finished export into place, replacing a previous export only after the new one is complete."""
    old = out.with_name(f".{out.name}.old-export")
    _retire(old, out)  # left by an interrupted publish of ours
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    _retire(old, out)


def _retire(old: Path, out: Path) -> None:
    """Remove a replaced export, first moving into ``out`` what no export wrote there (a user's notes).

    Without ``out`` (a publish interrupted between its two renames) the replaced export is put back.
    """
    if not (old.exists() or old.is_symlink()):
        return
    if not _ours(old, EXPORT_META):
        raise ConversionError(f"{old} exists and was not written by an export; remove or rename it yourself")
    if not out.exists():
        os.replace(old, out)
        return
    try:
        recorded = set(json.loads((old / EXPORT_META).read_text()).get("files", []))
    except (OSError, json.JSONDecodeError):
        recorded = set()
    for entry in old.iterdir():
        if entry.name not in recorded and not (out / entry.name).exists() and not EXPORT_SHARD.fullmatch(entry.name):
            os.replace(entry, out / entry.name)
    shutil.rmtree(old)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    fmt: str = "fuyu",
    *,
    model_meta: str | os.PathLike | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    dtype: str | None = None,
    max_shard_bytes: int = 512 << 20,
    progress: bool = True,
) -> Path:
    """Export ``checkpoint`` (save root or iter_N dir) to ``out_dir`` as ``fmt`` ("fuyu" or "solo").

    ``model_meta`` defaults to ROOT/solo_model.json and ``tokenizer_dir`` to ROOT/tokenizer.
    ``dtype``: e.g. "bfloat16" to cast; None keeps the stored precision.
    """
    exporter(fmt)
    root, ckpt = resolve_checkpoint(checkpoint)
    meta, meta_path = read_metadata(root, model_meta)
    cfg = model_config(meta)
    check_checkpoint(ckpt, meta, meta_path)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else root / TOKENIZER_DIR
    tok = load_tokenizer(tok_dir)
    if tok.vpatch_id != cfg.vpatch_token_id or tok.vocab_size > cfg.vocab_size:
        raise TokenizerMismatchError(
            f"{tok_dir}: <vpatch> id {tok.vpatch_id} / {tok.vocab_size} ids do not fit the model "
            f"(vpatch_token_id {cfg.vpatch_token_id}, vocab_size {cfg.vocab_size})"
        )
    top = exporter(fmt).export_config(cfg, tok, dtype or "float32", decoder_adapter(cfg))  # refuses a misfit early
    out = Path(os.path.abspath(out_dir))  # "--out ." has a name to build its hidden sibling from
    _check_target(out, root, ckpt)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-export")
    _remove_leftover(tmp, IN_PROGRESS, EXPORT_META)  # an interrupted export of ours
    _retire(out.with_name(f".{out.name}.old-export"), out)
    tmp.mkdir()
    (tmp / IN_PROGRESS).touch()
    try:
        run_workers(_export_worker, 1, str(ckpt), str(tmp), str(meta_path), fmt, max_shard_bytes, dtype, progress)
        write_config(tmp, top, tok)
        tok.save_pretrained(tmp)
        if fmt == "fuyu":
            SoloProcessor(tok, patch_size=cfg.patch_size).save_pretrained(tmp)
        files = sorted({p.name for p in tmp.iterdir()} - {IN_PROGRESS} | {EXPORT_META})  # a later export's to replace
        (tmp / EXPORT_META).write_text(json.dumps(
            {"format": fmt, "checkpoint": str(ckpt.resolve()), "source": meta.get("source"),
             "template": recorded_template(meta), "files": files}, indent=2))
        (tmp / IN_PROGRESS).unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # ours, never published; a kill leaves it for the next export
        raise
    _publish(tmp, out)
    return out
