"""Start-up checks of a training job, run before the model is built so a bad job fails in seconds.

The saved state of a resumed run (is it already complete? does its data position fit this blend?),
the data (shards indexed, epoch 0 planned), and the layer implementation and precision.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from megatron_solo.checkpoint.layout import (
    checkpoint_dir,
    latest_iteration,
    newest_complete_iteration,
    resolve_checkpoint,
    without_latest_note,
)
from megatron_solo.checkpoint.metadata import META_FILE, check_checkpoint, model_config, read_metadata
from megatron_solo.checkpoint.train_state import DataPosition, TrainState, read_train_state
from megatron_solo.config.data import DataConfig
from megatron_solo.config.job import JobConfig
from megatron_solo.config.model import SoloModelConfig, model_preset, with_overrides
from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.config.train import TrainConfig
from megatron_solo.errors import UserInputError


class RunSetupError(UserInputError):
    """A job that cannot start as configured: its data, its saved data position or its precision."""


@dataclass
class SavedRun:
    """The newest checkpoint of a save folder: where it is, its train state, and how it was found."""

    path: str
    state: TrainState
    note: str | None = None  # said when the save folder's latest file did not name it

    @property
    def iteration(self) -> int:
        """Steps the saved run had completed."""
        return self.state.iteration


def job_model_config(job: JobConfig) -> SoloModelConfig:
    """The model a job trains: the ``init_from`` checkpoint's own when it describes one, else the preset.

    An imported base (Mistral, Llama, Qwen2, ...) or a previous stage keeps its shape, biases and decoder
    family; the run's own layer implementation and precision replace the recorded ones, then
    ``model_overrides`` apply.
    """
    if not job.init_from:
        return model_preset(job.model, **job.model_overrides)
    root, ckpt = resolve_checkpoint(job.init_from)
    if (root / META_FILE).is_file():
        meta, meta_path = read_metadata(root)
        cfg = with_overrides(model_config(meta).with_run_defaults(), job.model_overrides, str(meta_path))
        what = f"--init-from {job.init_from} with --model-overrides {job.model_overrides}"
    else:
        cfg, what = model_preset(job.model, **job.model_overrides), f"--model {job.model}"
    # the stored tensors against the model to build: a mismatch names its field, before any model exists
    check_checkpoint(ckpt, {"model": dataclasses.asdict(cfg)}, what)
    return cfg


def saved_run(save_dir: str | None) -> SavedRun | None:
    """The newest checkpoint under ``save_dir`` (None without one), read without building a model.

    A folder whose latest file is missing (a copy that skipped it) resumes from its newest complete
    ``iter_N``, saying so: a new run there would overwrite checkpoints it did not write.
    """
    if not save_dir:
        return None
    iteration, note = latest_iteration(save_dir), None
    if iteration is None:
        iteration = newest_complete_iteration(save_dir)
        if iteration is None:
            return None
        note = without_latest_note(save_dir, iteration)
    path = checkpoint_dir(save_dir, iteration)
    return SavedRun(path, read_train_state(path), note)


def check_save_writable(save_dir: str | None) -> None:
    """RunSetupError on every rank when a rank cannot write into ``save_dir`` (or the folder that will hold it)."""
    import tempfile

    import torch

    from megatron_solo.platform import ranks_with

    if not save_dir:
        return
    folder = Path(save_dir).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    reason = None
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
    failed = ranks_with(reason is not None)  # every rank stops, not only those that cannot write
    if failed:
        where = f"on {failed} of {torch.distributed.get_world_size()} ranks"
        raise RunSetupError(f"--save {save_dir}: cannot write checkpoints into {folder} ({reason or where})")


def check_saved_model(save_dir: str | None, model: SoloModelConfig) -> None:
    """RunSetupError when ``save_dir`` holds the run of another model (its solo_model.json differs)."""
    if not save_dir or not (Path(save_dir) / META_FILE).is_file():
        return
    meta, meta_path = read_metadata(save_dir)
    # how a run computes the model may change between runs; what the model is may not
    saved, mine = (dataclasses.asdict(c.with_run_defaults()) for c in (model_config(meta), model))
    differ = sorted(k for k in mine if saved[k] != mine[k])
    if differ:
        pairs = ", ".join(f"{k} {saved[k]} vs {mine[k]}" for k in differ)
        raise RunSetupError(f"--save {save_dir} holds the run of another model ({meta_path} differs: {pairs}); "
                            "choose another --save folder")


def build_checked_loader(config: DataConfig, train: TrainConfig, patch_size: int, rank: int, world_size: int,
                         what: str, limit: int | None = None):
    """A PackedDataLoader whose shards are indexed and epoch 0 planned and checked for data loss.

    DataLossError when the packer would drop more than ``config.max_drop_share`` of a source's tokens;
    the data layer's other input errors as RunSetupError.
    """
    from megatron_solo.data.loader import build_data_loader
    from megatron_solo.platform.distributed import uses_cuda

    try:
        loader = build_data_loader(config, train.seq_length, train.micro_batch_size, patch_size,
                                   rank=rank, world_size=world_size, limit=limit, pin_memory=uses_cuda())
        loader.dataset.epoch_size(0)  # plan now: packing problems show before the model is built
    except UserInputError:
        raise
    except ValueError as err:  # the data layer's validation of blend and packing policy
        raise RunSetupError(f"{what}: {err}") from err
    loader.dataset.check_overflow(config.max_drop_share)
    return loader


def overflow_lines(loader, what: str) -> list[str]:
    """The start-up report of epoch 0's packing: one line per source with its split and dropped samples."""
    from megatron_solo.data.overflow import format_overflow_report

    return [f"{what}: {line}" for line in format_overflow_report(loader.dataset.overflow_report(0))]


def restore_data_position(loader, position: DataPosition, allow_data_change: bool, save_dir: str) -> str | None:
    """Put ``loader`` at the saved position; returns a note when the blend changed and that is allowed."""
    saved = dataclasses.asdict(position)
    now = loader.dataset.fingerprint()
    changed = saved.get("fingerprint") != now
    if changed and not allow_data_change:
        raise RunSetupError(
            f"{save_dir}: the data blend (shards, weights, seq_length, seed or packing policy) differs from the "
            f"checkpoint's; pass --allow-data-change (JobConfig.allow_data_change) to resume with this blend "
            f"from the checkpoint's data position ({saved.get('consumed_packs')} packs consumed)"
        )
    try:
        loader.load_state_dict(saved, strict=False)
    except ValueError as err:
        raise RunSetupError(f"{save_dir}: cannot resume the data position: {err}") from err
    if changed:
        return (f"data blend changed since the checkpoint: reading the new blend from pack "
                f"{loader.consumed_packs} on (--allow-data-change)")
    return None


def check_sequence_split(model: SoloModelConfig, train: TrainConfig, parallel: ParallelConfig) -> None:
    """RunSetupError when sequence parallelism cannot split a micro-batch's tokens evenly over the TP ranks.

    megatron-core finds out in an assertion of its first scatter. The local spec's sbhd layout splits each
    sequence; the TE spec's thd layout splits the micro-batch's B x S tokens as one, but between pipeline
    stages megatron-core's buffers are [S / TP, B, H] again.
    """
    if not parallel.sequence_parallel:
        return
    from megatron_solo.model.builder import default_packed_format
    from megatron_solo.model.specs import resolve_impl

    tp, seq, micro = parallel.tensor_parallel, train.seq_length, train.micro_batch_size
    flat = default_packed_format(resolve_impl(model, bf16=train.bf16)) == "thd" and parallel.pipeline_parallel == 1
    if flat and seq * micro % tp:
        raise RunSetupError(f"sequence parallelism splits the seq_length x micro_batch_size = {seq} x {micro} tokens "
                            f"of a micro-batch over tensor_parallel {tp} ranks, and {seq * micro} does not divide by "
                            f"{tp} (change --seq-length or --micro-batch-size, or --no-sequence-parallel)")
    if not flat and seq % tp:
        raise RunSetupError(f"sequence parallelism splits each sequence over the tensor_parallel {tp} ranks, and "
                            f"seq_length {seq} does not divide by {tp} (change --seq-length, or "
                            "--no-sequence-parallel)")


def describe_layers(model: SoloModelConfig, bf16: bool, tokens: int, tensor_parallel: int,
                    sequence_parallel: bool = False) -> str:
    """The start-up line naming the layer implementation and precision; LayerImplError when unavailable.

    ``tokens``: those of one micro-batch on one rank, the row count of every layer GEMM.
    """
    from megatron_solo.model.specs import check_fp8, check_fp8_shapes, describe_precision

    check_fp8(model, bf16=bf16)
    check_fp8_shapes(model, tokens, tensor_parallel, sequence_parallel=sequence_parallel)
    return f"layers: {describe_precision(model, bf16)}"
