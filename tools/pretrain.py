"""Train SOLO on megatron-core: one entry point for a laptop (CPU, gloo) and a cluster (torchrun, NCCL).

Example (2 processes on this machine):
  torchrun --nproc-per-node 2 tools/pretrain.py --model solo-tiny --chat-tokens \\
      --data shards/imagenet:0.7 shards/text:0.3 --eval-data shards/heldout --tensor-parallel 2 --save ckpt/stage1

Without --recipe the model's own recipe applies: SOLO's stage 1 for solo-7b, "small" (a short run that
learns: lr 2e-3, 10 warm-up steps, 200 steps of 8 x 1024 tokens) for solo-small and solo-tiny.
Re-running a finished run (same --save) prints that it is complete and exits 0.
"""

from __future__ import annotations

import sys
from typing import Any

from megatron_solo.config.pretrain import build_job, pretrain_command
from megatron_solo.errors import run_tool

COMMAND = pretrain_command(__doc__)


def parse_args(argv: list[str]) -> dict[str, Any]:
    """Command-line options, by config field path (build_job makes the JobConfig)."""
    return COMMAND.parse(argv)


def main(argv: list[str]) -> None:
    """Entry point."""
    from megatron_solo.training.loop import pretrain

    summary = pretrain(build_job(parse_args(argv)))
    if not summary.is_log_rank:
        return
    if summary.complete:
        print(f"the run is complete: iteration {summary.iteration} of {summary.total_steps}, checkpoint at "
              f"{summary.checkpoint}; nothing to do", flush=True)
        return
    line = f"done: iteration {summary.iteration}"
    if summary.losses:
        line += f", last loss {summary.losses[-1]:.4f}"
    if summary.val_losses:
        line += f", val_loss {summary.val_losses[-1][1]:.4f}"
    if summary.preempted:
        line += " (stopped early, checkpoint saved)" if summary.saved else ", stopped early (no --save: nothing saved)"
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(run_tool(main))
