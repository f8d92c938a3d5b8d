"""The loss-spike policy: a step loss far above the recent robust level is warned about, skipped or rewound.

A spike is a step loss above ``median + k x MAD`` of the last ``window`` step losses (the median absolute
deviation; a MAD under 0.1% of the median counts as that much, so a run of equal losses does not make
every rise a spike). Detection is off during the learning-rate warm-up and until the window is full.
The window lives in the train state (``spike_history``), so a resumed run decides as the run it continues.
Every rank holds the same agreed global loss (:func:`.guard.check_step`), hence the same decision.

A run that diverges from its first steps has no normal window to rise above, so from step 1 on, warm-up
included, a step loss above DIVERGED_FACTOR x ln(vocabulary size) (twice the loss of a uniform guess over
the vocabulary, which a fresh model starts near and a trained one stays well below) is a spike as well.

``warn`` names the spike's data and applies the update (its loss joins the window: the run moved there);
``skip`` leaves the step without its update; ``rewind`` also leaves it, then the step loop goes back to the
last checkpoint and skips the data read since it up to the spike (:mod:`.rewind`). Skips and rewinds count
against ``--max-skipped-steps``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from megatron_solo.checkpoint.train_state import TrainState
from megatron_solo.config.train import TrainConfig
from megatron_solo.training.guard import count_skipped_step

MAD_FLOOR = 1e-3  # the smallest MAD, as a share of the median
DIVERGED_FACTOR = 2.0  # a step loss above this many times ln(vocabulary size) is a diverged run's


@dataclass
class Spike:
    """One detected spike: its step, loss and the level it rose above."""

    iteration: int
    loss: float
    median: float
    mad: float
    threshold: float
    diverged: bool = False  # above the ceiling of DIVERGED_FACTOR x ln(vocabulary), not the recent level

    def describe(self, k: float, window: int) -> str:
        """The spike in words (without its data)."""
        if self.diverged:
            return (f"step {self.iteration}: loss spike {self.loss:.4g} above {self.threshold:.4g}, "
                    f"{DIVERGED_FACTOR:g} x the loss of a uniform guess over the vocabulary (the run is diverging)")
        return (f"step {self.iteration}: loss spike {self.loss:.4g} above {self.threshold:.4g} (median "
                f"{self.median:.4g} + {k:g} x MAD {self.mad:.4g} of the last {window} losses)")


def robust_level(losses: list[float], k: float) -> tuple[float, float, float]:
    """(median, MAD, median + k x MAD) of ``losses``, the MAD at least MAD_FLOOR of the median."""
    median = statistics.median(losses)
    mad = max(statistics.median(abs(v - median) for v in losses), MAD_FLOOR * abs(median))
    return median, mad, median + k * mad


class SpikePolicy:
    """Finds spikes in the step losses and says whether a step's update is applied (``warn``) or not."""

    def __init__(self, train: TrainConfig, vocab_size: int) -> None:
        self.policy, self.window, self.k = train.on_spike, train.spike_window, train.spike_mad_factor
        self.warmup, self.budget = train.optim.warmup_steps, train.max_skipped_steps
        self.ceiling = DIVERGED_FACTOR * math.log(vocab_size)

    def check(self, iteration: int, loss: float | None, state: TrainState) -> Spike | None:
        """The spike at step ``iteration`` (a finite global ``loss``), or None; keeps the window in ``state``."""
        if self.policy == "off" or loss is None:
            return None
        history = state.spike_history
        spike = None
        if iteration > self.warmup and len(history) >= self.window:
            median, mad, threshold = robust_level(history, self.k)
            if loss > threshold:
                spike = Spike(iteration, loss, median, mad, threshold)
        if spike is None and loss > self.ceiling:
            spike = Spike(iteration, loss, loss, 0.0, self.ceiling, diverged=True)
        if iteration > self.warmup and (spike is None or self.policy == "warn"):  # the warm-up's are not normal
            history.append(loss)
            del history[:-self.window]
        return spike if spike is None else self._found(spike, state)

    def _found(self, spike: Spike, state: TrainState) -> Spike:
        """Count ``spike``, and the step it leaves without its update (unless warned)."""
        state.spikes += 1
        if self.policy != "warn":
            self._count_skip(spike, state)
        return spike

    def _count_skip(self, spike: Spike, state: TrainState) -> None:
        """Count a step left without its update; DivergenceError once over the budget."""
        count_skipped_step(state, self.budget, spike.describe(self.k, self.window), f" (--on-spike {self.policy})")

    def describe(self, spike: Spike, data: str) -> str:
        """The log line of ``spike`` with the step's data position and what the policy does."""
        action = {"warn": "update applied", "skip": "update skipped",
                  "rewind": "update skipped, rewinding to the last checkpoint"}[self.policy]
        return f"{spike.describe(self.k, self.window)}; {action} (--on-spike {self.policy}); data: {data}"
