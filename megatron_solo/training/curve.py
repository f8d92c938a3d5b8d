"""loss_curve.png beside the tensorboard logs: log-scale loss, training and validation, spikes and skips marked.

Read back from the tensorboard event files, so a resumed run's curve covers every attempt. Spikes and
skipped steps are read from their running counts (``train/spikes``, ``train/skipped_steps``): a step is
marked where its count rose.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

CURVE_FILE = "loss_curve.png"
TRAIN_LOSS, VAL_LOSS = "train/loss", "val/loss"
SPIKES, SKIPPED = "train/spikes", "train/skipped_steps"  # running counts, one value per logged step


def read_scalars(tensorboard_dir: str | os.PathLike, tags: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) series of ``tags`` from the event files in ``tensorboard_dir`` (last value per step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    acc.Reload()
    have = set(acc.Tags().get("scalars", []))
    return {t: sorted({e.step: e.value for e in acc.Scalars(t)}.items()) for t in tags if t in have}


def rises(counts: list[tuple[int, float]]) -> list[int]:
    """The steps at which a running count went up (the first logged value counts from zero)."""
    steps, before = [], 0.0
    for step, value in counts:
        if value > before:
            steps.append(step)
        before = value
    return steps


@dataclass
class CurveData:
    """What the picture shows: the two loss series and the marked steps."""

    train: list[tuple[int, float]] = field(default_factory=list)
    val: list[tuple[int, float]] = field(default_factory=list)
    spikes: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)

    @classmethod
    def read(cls, tensorboard_dir: str | os.PathLike) -> CurveData:
        """The curve's data from the event files of ``tensorboard_dir``."""
        s = read_scalars(tensorboard_dir, (TRAIN_LOSS, VAL_LOSS, SPIKES, SKIPPED))
        return cls(s.get(TRAIN_LOSS, []), s.get(VAL_LOSS, []), rises(s.get(SPIKES, [])), rises(s.get(SKIPPED, [])))


def _plottable(series: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    """Steps and values a log axis can show (a NaN, Inf or non-positive loss is left out)."""
    kept = [(s, v) for s, v in series if math.isfinite(v) and v > 0]
    return [s for s, _ in kept], [v for _, v in kept]


def loss_figure(data: CurveData):
    """The matplotlib Figure of ``data`` (no pyplot: no global state, no display needed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    steps, values = _plottable(data.train)
    ax.plot(steps, values, color="tab:blue", linewidth=1.2, label="train", gid="train")
    vsteps, vvalues = _plottable(data.val)
    ax.plot(vsteps, vvalues, color="tab:red", marker="o", markersize=4, linewidth=1.5, label="validation", gid="val")
    by_step = dict(zip(steps, values))
    spikes = [s for s in data.spikes if s in by_step]
    ax.scatter(spikes, [by_step[s] for s in spikes], marker="^", s=60, color="tab:orange", zorder=3,
               label=f"loss spike ({len(data.spikes)})", gid="spikes")
    for i, step in enumerate(data.skipped):
        ax.axvline(step, color="tab:gray", linestyle="--", linewidth=1, gid="skipped",
                   label=f"skipped step ({len(data.skipped)})" if i == 0 else None)
    last = [f"train {values[-1]:.4g}"] if values else []
    last += [f"validation {vvalues[-1]:.4g}"] if vvalues else []
    ax.set_title("loss" + (f" (last: {', '.join(last)})" if last else ""))
    ax.legend(loc="upper right")
    return fig


def write_loss_curve(tensorboard_dir: str | os.PathLike) -> Path | None:
    """Draw the loss curve into TENSORBOARD_DIR/loss_curve.png; None when no loss was logged there."""
    data = CurveData.read(tensorboard_dir)
    if not data.train and not data.val:
        return None
    path = Path(tensorboard_dir) / CURVE_FILE
    loss_figure(data).savefig(path)
    return path
