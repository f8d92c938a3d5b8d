"""A DP2 run watched the ways a user watches one: tensorboard, W&B offline, a profiled step, a slow rank."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path

from tests.harness.training import small_job

SLOW_RANK, SLOW_SECONDS = 1, 0.75  # this data-parallel rank's micro-batches each take this much longer
PROFILE_RANK_MISSING = 5  # asked to profile too, in a run of two ranks


def _slow_down_this_rank() -> None:
    """Make every forward step of this rank SLOW_SECONDS slower (as a slow GPU or data reader would)."""
    import megatron_solo.training.forward_step as fs

    original = fs.solo_forward_step

    def slow_forward_step(*args, **kwargs):
        time.sleep(SLOW_SECONDS)
        return original(*args, **kwargs)

    fs.solo_forward_step = slow_forward_step


def tracked_job(images: str, texts: str, root: str, steps: int, stop_after: int) -> None:
    """Worker: small_job with tensorboard, W&B (its mode from the environment) and step 3 profiled (on rank 0), run twice.

    The first attempt stops after ``stop_after`` steps, the second resumes it to ``steps``. Each attempt
    writes its summary to ROOT/attempt<N>.json (logging rank) and each rank's stdout and stderr to
    ROOT/attempt<N>.rank<R>.stdout and .stderr.
    """
    import torch

    from megatron_solo.training.loop import pretrain

    rank = torch.distributed.get_rank()
    if rank == SLOW_RANK:
        _slow_down_this_rank()
    job = small_job(images, texts, str(Path(root) / "ckpt"), steps, None)
    train = dataclasses.replace(job.train, tensorboard_dir=str(Path(root) / "tb"), profile_steps=(3, 3),
                                profile_ranks=[0, PROFILE_RANK_MISSING], wandb_project="solo-test",
                                wandb_run_name="tracked")
    for attempt, exit_after in enumerate((stop_after, None), start=1):
        out = Path(root) / f"attempt{attempt}"
        with (open(f"{out}.rank{rank}.stdout", "w") as lines, contextlib.redirect_stdout(lines),
              open(f"{out}.rank{rank}.stderr", "w") as errors, contextlib.redirect_stderr(errors)):
            summary = pretrain(dataclasses.replace(job, train=train, exit_after_steps=exit_after))
        if summary.is_log_rank:
            Path(f"{out}.json").write_text(json.dumps({"losses": summary.losses, "iteration": summary.iteration}))
