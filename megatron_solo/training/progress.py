"""Progress for long runs: a rate line on stdout and the same scalars in tensorboard (and W&B when asked)."""

from __future__ import annotations

import sys

from megatron_solo.training.rank_times import RankTimes
from megatron_solo.training.tracking import Trackers, WandbSettings, open_trackers

# the tags of the data-parallel ranks' own step times (see rank_times.py)
RANK_TIME_TAGS = {"min": "train/rank_step_time_min", "median": "train/rank_step_time_median",
                  "max": "train/rank_step_time_max"}


class TrainLogger:
    """Prints one line per logged step and writes its scalars to every tracker (on one rank only)."""

    def __init__(self, enabled: bool, tensorboard_dir: str | None, total_steps: int,
                 wandb: WandbSettings | None = None) -> None:
        self.enabled = enabled
        self.total = total_steps
        self.trackers = open_trackers(tensorboard_dir, wandb) if enabled else Trackers([])

    def info(self, line: str, *, warning: bool = False) -> None:
        """One start-up line (warnings on stderr)."""
        if self.enabled:
            print(line, file=sys.stderr if warning else sys.stdout, flush=True)

    def scalars(self, iteration: int, values: dict[str, float]) -> None:
        """Record tagged scalars (``train/skipped_steps``...) at ``iteration`` in every tracker."""
        for tag, value in values.items():
            self.trackers.add_scalar(tag, value, iteration)

    def data(self, iteration: int, dropped_samples: int, dropped_tokens: int) -> None:
        """Record the samples (and tokens) the packer dropped from the data read so far."""
        self.scalars(iteration, {"data/dropped_samples": dropped_samples, "data/dropped_tokens": dropped_tokens})

    def step(self, iteration: int, scalars: dict[str, float | None], tokens: int, seconds: float,
             val_loss: float | None = None, dropped_samples: int = 0, ranks: RankTimes | None = None) -> None:
        """Report one optimizer step that processed ``tokens`` tokens in ``seconds`` (validation excluded).

        ``ranks``: the data-parallel ranks' own step times, shown in the line when there are several ranks.
        """
        if not self.enabled:
            return
        rate = tokens / max(seconds, 1e-9)
        parts = [f"{k} {v:.4g}" for k, v in scalars.items() if v is not None]
        if val_loss is not None:
            parts.append(f"val_loss {val_loss:.4g}")
        if dropped_samples:
            parts.append(f"dropped {dropped_samples} samples")
        line = f"step {iteration}/{self.total} | {' | '.join(parts)} | {rate:,.0f} tokens/s | {seconds:.2f} s/step"
        if ranks is not None and ranks.count > 1:
            line += (f" | ranks min/median/max {ranks.min:.2f}/{ranks.median:.2f}/{ranks.max:.2f} s "
                     f"(slowest: dp rank {ranks.slowest})")
        print(line, flush=True)
        tagged = {f"train/{k}": v for k, v in scalars.items() if v is not None}
        tagged["train/tokens_per_s"] = rate
        if val_loss is not None:
            tagged["val/loss"] = val_loss
        if ranks is not None:
            tagged.update({tag: getattr(ranks, key) for key, tag in RANK_TIME_TAGS.items()})
        self.scalars(iteration, tagged)

    def close(self) -> None:
        """Close the trackers and draw the loss curve (training and validation) beside tensorboard's files."""
        folder = self.trackers.tensorboard_dir
        self.trackers.close()
        if folder is not None:
            from megatron_solo.training.curve import write_loss_curve

            path = write_loss_curve(folder)
            if path is not None:
                print(f"loss curve: {path}", flush=True)
