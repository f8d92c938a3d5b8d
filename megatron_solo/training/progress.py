"""Progress for long runs: a rate line on stdout and the same scalars in tensorboard."""

from __future__ import annotations

import sys


class TrainLogger:
    """Prints one line per logged step and writes scalars to tensorboard (on one rank only)."""

    def __init__(self, enabled: bool, tensorboard_dir: str | None, total_steps: int) -> None:
        self.enabled = enabled
        self.total = total_steps
        self.writer = None
        if enabled and tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(tensorboard_dir)

    def info(self, line: str, *, warning: bool = False) -> None:
        """One start-up line (warnings on stderr)."""
        if self.enabled:
            print(line, file=sys.stderr if warning else sys.stdout, flush=True)

    def data(self, iteration: int, dropped_samples: int, dropped_tokens: int) -> None:
        """Record the samples (and tokens) the packer dropped from the data read so far."""
        if self.writer is not None:
            self.writer.add_scalar("data/dropped_samples", dropped_samples, iteration)
            self.writer.add_scalar("data/dropped_tokens", dropped_tokens, iteration)

    def step(self, iteration: int, scalars: dict[str, float | None], tokens: int, seconds: float,
             val_loss: float | None = None, dropped_samples: int = 0) -> None:
        """Report one optimizer step that processed ``tokens`` tokens in ``seconds`` (validation excluded)."""
        if not self.enabled:
            return
        rate = tokens / max(seconds, 1e-9)
        parts = [f"{k} {v:.4g}" for k, v in scalars.items() if v is not None]
        if val_loss is not None:
            parts.append(f"val_loss {val_loss:.4g}")
        if dropped_samples:
            parts.append(f"dropped {dropped_samples} samples")
        print(f"step {iteration}/{self.total} | {' | '.join(parts)} | {rate:,.0f} tokens/s | {seconds:.2f} s/step",
              flush=True)
        if self.writer is not None:
            for key, value in scalars.items():
                if value is not None:
                    self.writer.add_scalar(f"train/{key}", value, iteration)
            self.writer.add_scalar("train/tokens_per_s", rate, iteration)
            if val_loss is not None:
                self.writer.add_scalar("val/loss", val_loss, iteration)

    def close(self) -> None:
        """Flush tensorboard and draw the loss curve (training and validation) beside it."""
        if self.writer is not None:
            self.writer.close()
            from megatron_solo.training.curve import write_loss_curve

            path = write_loss_curve(self.writer.log_dir)
            if path is not None:
                print(f"loss curve: {path}", flush=True)
