"""Save and load training checkpoints with megatron-core ``dist_checkpointing`` (loadable at another TP/PP/DP).

A checkpoint (see :mod:`megatron_solo.checkpoint.layout`) is written to ``iter_N.partial`` and renamed into place by rank 0 only
after every rank finished, then the ``latest`` file is replaced atomically; a
partly written checkpoint is never taken as the latest. An asynchronous save (:func:`start_save`) does
the rename in the finalize step megatron-core runs once the background write ended on every rank. Older ``.partial`` folders (a
save that was killed) are removed once a newer checkpoint is complete.

What we write besides the tensors is read back without pickle: the train state (iteration, data
position, schedule, layout) is ``solo_train_state.json`` in the checkpoint folder and the RNG states
are uint8 tensors (:mod:`megatron_solo.checkpoint.rng`). torch's distributed checkpoint itself still
unpickles its ``.metadata`` file and megatron-core's ``_extra_state`` objects: a checkpoint is trusted
input, like Megatron-LM's and torch DCP's.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from megatron_solo.checkpoint.layout import (
    LATEST_FILE,
    PARTIAL_MARKER,
    PARTIAL_SUFFIX,
    CheckpointError,
    checkpoint_dir,
    latest_iteration,
    resolve_checkpoint,
)
from megatron_solo.checkpoint.metadata import record_saved_layout
from megatron_solo.checkpoint.names import drop_empty_extra_state, drop_missing_extra_state
from megatron_solo.checkpoint.optimizer_reshard import write_bucket_indices
from megatron_solo.checkpoint.optimizer_state import (
    check_optimizer_kind,
    load_optimizer_state,
    optimizer_load_request,
    optimizer_sharded_state_dict,
    prime_optimizer_state,
)
from megatron_solo.checkpoint.rng import restore_rng, rng_in_checkpoint, rng_sharded_state_dict
from megatron_solo.checkpoint.save_strategy import save_strategy
from megatron_solo.checkpoint.train_state import SavedLayout, TrainState, read_train_state, write_train_state
from megatron_solo.checkpoint.write_results import ensure_write_results_queue
from megatron_solo.model.chunks import unwrap

FULL_DISK_BYTES = 16 * 2**20  # less free space than this (or 0.5% of the disk) after a failed write: full

__all__ = ["PendingSave", "TrainState", "load_checkpoint", "read_sharded", "save_checkpoint", "start_save"]

def _model_sharded_state_dict(chunks: list[torch.nn.Module]) -> dict[str, Any]:
    # The unwrapped modules: DDP would prefix every key with "module.".
    if len(chunks) == 1:
        return {"model": unwrap(chunks[0]).sharded_state_dict()}
    return {f"model{i}": unwrap(c).sharded_state_dict() for i, c in enumerate(chunks)}


def _layout() -> tuple[int, int, int, int, int, int]:
    from megatron.core import parallel_state as ps

    return (
        ps.get_pipeline_model_parallel_world_size(),
        ps.get_tensor_model_parallel_world_size(),
        ps.get_data_parallel_world_size(),
        ps.get_pipeline_model_parallel_rank(),
        ps.get_tensor_model_parallel_rank(),
        ps.get_data_parallel_rank(),
    )


def _saved_layout(layout: tuple[int, ...]) -> SavedLayout:
    """The (pp, tp, dp) sizes of a ``_layout()`` tuple as the train state records them."""
    return SavedLayout(pipeline_parallel=layout[0], tensor_parallel=layout[1], data_parallel=layout[2])


def save_checkpoint(
    root: str,
    state: TrainState,
    chunks: list[torch.nn.Module],
    optimizer=None,
    scheduler=None,
) -> str:
    """Write a checkpoint of this step atomically; returns its directory."""
    pending = start_save(root, state, chunks, optimizer, scheduler)
    pending.finish()
    return pending.final


@dataclass
class PendingSave:
    """A checkpoint whose shards are being written to ``iter_N.partial``; :meth:`finish` makes it the latest.

    ``request`` is megatron-core's AsyncRequest of an asynchronous save (None: the shards are written);
    its finalize functions end with :meth:`finish`, so the rename happens only once every rank wrote.
    """

    root: str
    final: str
    state: TrainState  # a copy taken when the save started: the run goes on changing its own
    request: Any = None

    def failure(self, err: BaseException) -> CheckpointError:
        """The one line for a write of this checkpoint that failed: why, the free space left, what stays latest."""
        first = next((failure[0] for failure in getattr(err, "failures", {}).values()), err)
        disk = shutil.disk_usage(self.root)
        # a full disk shows as ENOSPC, or as a torch writer's "unexpected pos": the free space tells
        full = " (the file system is full)" if disk.free < max(FULL_DISK_BYTES, disk.total // 200) else ""
        latest = latest_iteration(self.root)
        kept = f"the latest checkpoint is still {checkpoint_dir(self.root, latest)}" if latest is not None else \
            "there is no checkpoint yet"
        return CheckpointError(f"{self.final}: cannot write the checkpoint ({type(first).__name__}: {first}); "
                               f"{disk.free / 2**20:,.1f} MiB free on {self.root}{full}; {kept}")

    def finish(self) -> None:
        """On every rank: rank 0 writes the train state, renames the folder into place and updates ``latest``."""
        dist.barrier()
        if dist.get_rank() == 0:
            partial = self.final + PARTIAL_SUFFIX
            write_train_state(partial, self.state)
            os.remove(os.path.join(partial, PARTIAL_MARKER))
            if os.path.exists(self.final):
                shutil.rmtree(self.final)
            os.replace(partial, self.final)
            tmp = os.path.join(self.root, LATEST_FILE + ".tmp")
            with open(tmp, "w") as f:
                f.write(str(self.state.iteration))
            os.replace(tmp, os.path.join(self.root, LATEST_FILE))
            record_saved_layout(self.root, self.state.layout)
            _remove_stale_partials(self.root, self.state.iteration)
        dist.barrier()


def start_save(root: str, state: TrainState, chunks: list[torch.nn.Module], optimizer=None, scheduler=None, *,
               async_save: bool = False) -> PendingSave:
    """Write this step's shards into ``iter_N.partial`` (in the background with ``async_save``).

    Synchronous: the shards are on disk when this returns; call ``finish()``. Asynchronous: schedule
    ``request`` on megatron-core's AsyncCallsQueue; ``finish`` is already its last finalize function.
    """
    from megatron.core import dist_checkpointing

    final = checkpoint_dir(root, state.iteration)
    partial = final + PARTIAL_SUFFIX
    # every rank looks before rank 0 makes the folder (then marked), so all decide alike
    foreign = os.path.lexists(partial) and not os.path.exists(os.path.join(partial, PARTIAL_MARKER))
    dist.barrier()
    if foreign:
        raise CheckpointError(f"{partial}: in the way of this run's checkpoint, and not a save's unfinished folder; "
                              "move it away")
    if dist.get_rank() == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)  # an unfinished save of this step, killed: done again
        os.makedirs(partial)
        open(os.path.join(partial, PARTIAL_MARKER), "w").close()
    dist.barrier()
    layout = _layout()
    sharded = _model_sharded_state_dict(chunks)
    snapshot = dataclasses.replace(copy.deepcopy(state), layout=_saved_layout(layout),
                                   scheduler=scheduler.state_dict() if scheduler is not None else None)
    pending = PendingSave(root, final, snapshot)
    if optimizer is not None:
        _written_everywhere(pending, lambda: write_bucket_indices(partial, optimizer, sharded))
        sharded["optimizer"] = optimizer_sharded_state_dict(optimizer, sharded)
    sharded["rng_state"] = rng_sharded_state_dict(layout)
    ensure_write_results_queue()
    strategy, new = save_strategy(sharded)
    try:  # the sharding is checked once per structure (its check gathers every rank's metadata)
        request = dist_checkpointing.save(sharded, partial, strategy, validate_access_integrity=new,
                                          async_sharded_save=async_save)
    except CheckpointException as err:  # a BaseException: it would pass by every `except Exception`
        raise pending.failure(err) from err
    if request is not None:
        request.add_finalize_fn(pending.finish)
        pending.request = request
    return pending


def _written_everywhere(pending: PendingSave, write: Callable[[], None]) -> None:
    """Run ``write`` (a file of this rank's); if it failed on any rank, every rank raises the save's failure
    (one small all-reduce), so that none goes on into the collective write alone."""
    from megatron_solo.platform.distributed import ranks_with

    try:
        write()
        error = None
    except OSError as err:
        error = err
    if ranks_with(error is not None):
        raise pending.failure(error or OSError("another rank could not write its part"))


def load_checkpoint(
    path: str,
    chunks: list[torch.nn.Module],
    optimizer=None,
    scheduler=None,
    *,
    load_rng: bool = True,
) -> TrainState:
    """Load weights (and optimizer, scheduler, RNG when given) from a checkpoint directory.

    ``path`` is either one ``iter_N`` directory or a save root with a ``latest`` file.
    Weights and the distributed optimizer reshard to this run's TP/PP/DP layout; RNG
    states are restored only when the layout is the one that saved them.
    """
    from megatron.core.dist_checkpointing.core import CheckpointingException
    from megatron.core.dist_checkpointing.serialization import load_sharded_metadata

    path = str(resolve_checkpoint(path)[1])
    saved = read_train_state(path)
    layout = _layout()
    try:
        held = {v.key: v for v in load_sharded_metadata(path).values()}
    except (CheckpointingException, OSError) as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint's metadata ({type(err).__name__}: {err})") from err
    sharded = _model_sharded_state_dict(chunks)
    empty = {name: drop_empty_extra_state(model_sd) for name, model_sd in sharded.items()}
    missing = {name: drop_missing_extra_state(model_sd, set(held)) for name, model_sd in sharded.items()}
    if any(missing.values()):
        _note(f"FP8 metadata not in checkpoint: starting fresh ({sum(map(len, missing.values()))} "
              f"_extra_state entries, e.g. {next(k for d in missing.values() for k in d)})")
    reshards = {}
    if optimizer is not None:
        check_optimizer_kind(optimizer, set(held), path)
        prime_optimizer_state(optimizer)
        sharded["optimizer"], reshards = optimizer_load_request(optimizer, sharded, path, set(held))
    if load_rng and saved.layout == _saved_layout(layout):
        if rng_in_checkpoint(held, layout):
            sharded["rng_state"] = rng_sharded_state_dict(layout)
        else:
            _note(f"{path}: no RNG states for this run's generators (another device kind or an older "
                  "format): fresh random streams")
    # a reshard reads overlapping saved ranges on several ranks: not one reader per shard, as the check wants
    loaded = read_sharded(sharded, path, validate=not reshards)
    for i, chunk in enumerate(chunks):
        name = "model" if len(chunks) == 1 else f"model{i}"
        _load_model(unwrap(chunk), loaded[name], {*empty[name], *missing[name]})
    if optimizer is not None:
        load_optimizer_state(optimizer, loaded["optimizer"], reshards)
    if scheduler is not None and saved.scheduler is not None:
        load_scheduler(scheduler, saved.scheduler)
    if "rng_state" in loaded:
        restore_rng(loaded["rng_state"])
    return saved


def load_scheduler(scheduler, state: dict) -> None:
    """Put megatron-core's OptimizerParamScheduler at the saved step, also one that has stepped already.

    Its ``load_state_dict`` adds the saved step count to its own (``step(increment=num_steps)``): right for a
    fresh scheduler, wrong for one loaded into mid-run (a rewind), which would jump ahead by its own steps.
    """
    scheduler.num_steps = 0
    scheduler.load_state_dict(state)


def read_sharded(sharded: dict[str, Any], path: str, validate: bool = True) -> dict[str, Any]:
    """``dist_checkpointing.load`` (``validate``: check that each shard has one reader); a checkpoint that cannot
    be read (a file missing or damaged, a tensor of another shape) is a CheckpointError naming the first failure,
    also inside a worker process."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.core import CheckpointingException
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        return dist_checkpointing.load(sharded, path, validate_access_integrity=validate)
    except CheckpointException as err:  # a BaseException: it would pass by every `except Exception`
        first = next((failure[0] for failure in err.failures.values()), err)
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(first).__name__}: {first})") from err
    except (CheckpointingException, OSError) as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(err).__name__}: {err})") from err


def _load_model(module: torch.nn.Module, state: dict[str, Any], fresh: set[str]) -> None:
    """load_state_dict, strict except for the ``_extra_state`` entries not read (``fresh``)."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in fresh]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint state does not fit the model: missing {missing}, unexpected {unexpected}")


def _note(message: str) -> None:
    if dist.get_rank() == 0:
        print(f"note: {message}", flush=True)


def _remove_stale_partials(root: str, completed: int) -> None:
    """Drop ``iter_N.partial`` folders of saves older than ``completed`` (killed mid-save; never loadable), only
    those a save made (they hold PARTIAL_MARKER): a folder of that name a user keeps there is left alone."""
    for entry in os.scandir(root):
        name = entry.name
        if not (entry.is_dir() and name.startswith("iter_") and name.endswith(PARTIAL_SUFFIX)):
            continue
        if not os.path.exists(os.path.join(entry.path, PARTIAL_MARKER)):
            continue
        number = name[len("iter_"):-len(PARTIAL_SUFFIX)]
        if number.isdigit() and int(number) < completed:
            shutil.rmtree(entry.path, ignore_errors=True)
