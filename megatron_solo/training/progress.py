"""Progress for long runs: a rate line on stdout and the same scalars in tensorboard."""

from __future__ import annotations

import time


class TrainLogger:
    """Prints one line per logged step and writes scalars to tensorboard (on one rank only)."""

    def __init__(self, enabled: bool, tensorboard_dir: str | None, total_steps: int) -> None:
        self.enabled = enabled
        self.total = total_steps
        self.writer = None
        self._t = time.perf_counter()
        if enabled and tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(tensorboard_dir)

    def step(self, iteration: int, scalars: dict[str, float], tokens: int) -> None:
        """Report one optimizer step; ``tokens`` is the number of tokens it processed."""
        now = time.perf_counter()
        elapsed, self._t = now - self._t, now
        if not self.enabled:
            return
        rate = tokens / max(elapsed, 1e-9)
        parts = " | ".join(f"{k} {v:.4g}" for k, v in scalars.items() if v is not None)
        print(f"step {iteration}/{self.total} | {parts} | {rate:,.0f} tokens/s | {elapsed:.2f} s/step", flush=True)
        if self.writer is not None:
            for key, value in scalars.items():
                if value is not None:
                    self.writer.add_scalar(f"train/{key}", value, iteration)
            self.writer.add_scalar("train/tokens_per_s", rate, iteration)

    def close(self) -> None:
        """Flush tensorboard."""
        if self.writer is not None:
            self.writer.close()
