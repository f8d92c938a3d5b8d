"""Rewind after a loss spike: back to the last checkpoint, the data read since it up to the spike skipped.

PaLM's remedy for spikes: restart from a checkpoint before the spike and skip the batches around it. The
weights, optimizer, schedule and RNG come back from the save folder's latest checkpoint; the loader moves on
to the packs after the spiking step's, and the skipped range ``[first, end)`` is appended to the train state's
``skipped_data``. The guard's counts (skipped steps, spikes, rewinds, skipped data) are the run's, not the
checkpoint's. The rewound state is also written as that checkpoint's train state, so a run killed before its
next checkpoint resumes on the same stream without having to meet the spike again.
"""

from __future__ import annotations

import dataclasses

import torch

from megatron_solo.checkpoint.train_state import DataPosition, TrainState


def rewind_to_latest(run, step_end: int) -> tuple[str, list[int]] | None:
    """Load the latest checkpoint into ``run`` and move its loader to pack ``step_end``; (checkpoint, skipped range).

    None when the save folder holds no checkpoint yet (the step is then only skipped). Call on every rank,
    with no checkpoint write in flight.
    """
    from megatron_solo.checkpoint.layout import latest_iteration
    from megatron_solo.checkpoint.state import load_checkpoint

    root = run.job.train.save_dir
    if latest_iteration(root) is None:
        return None
    before = run.state
    loaded = load_checkpoint(root, run.chunks, run.optimizer, run.scheduler)
    first = loaded.data.consumed_packs if loaded.data is not None else 0
    skipped = [first, step_end]
    run.loader.consumed_packs = step_end
    run.state = dataclasses.replace(
        loaded, data=DataPosition(**run.loader.state_dict()), skipped_steps=before.skipped_steps,
        spikes=before.spikes, rewinds=before.rewinds + 1, skipped_data=[*before.skipped_data, skipped])
    path = _record(root, loaded.iteration, run.state)
    return path, skipped


def _record(root: str, iteration: int, state: TrainState) -> str:
    """Write the rewound ``state`` as the train state of checkpoint ``iteration`` (rank 0); its folder."""
    from megatron_solo.checkpoint.layout import checkpoint_dir
    from megatron_solo.checkpoint.train_state import write_train_state

    path = checkpoint_dir(root, iteration)
    if torch.distributed.get_rank() == 0:
        write_train_state(path, state)
    torch.distributed.barrier()
    return path
