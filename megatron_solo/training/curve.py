"""A loss-curve picture (training and validation) beside the tensorboard logs, drawn with PIL.

Read back from the tensorboard event files, so a resumed run's curve covers every attempt.
"""

from __future__ import annotations

import os
from pathlib import Path

CURVE_FILE = "loss_curve.png"
_SIZE, _MARGIN = (800, 500), 60
_COLOURS = {"train/loss": (31, 119, 180), "val/loss": (214, 39, 40)}


def read_scalars(tensorboard_dir: str | os.PathLike, tags: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) series of ``tags`` from the event files in ``tensorboard_dir`` (last value per step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    acc.Reload()
    have = set(acc.Tags().get("scalars", []))
    return {t: sorted({e.step: e.value for e in acc.Scalars(t)}.items()) for t in tags if t in have}


def write_loss_curve(tensorboard_dir: str | os.PathLike) -> Path | None:
    """Draw train/loss and val/loss against the step into TENSORBOARD_DIR/loss_curve.png; None without data."""
    from PIL import Image, ImageDraw

    series = {k: v for k, v in read_scalars(tensorboard_dir, tuple(_COLOURS)).items() if v}
    if not series:
        return None
    points = [p for s in series.values() for p in s]
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1e-6)
    w, h = _SIZE
    img = Image.new("RGB", _SIZE, "white")
    draw = ImageDraw.Draw(img)

    def xy(step: int, value: float) -> tuple[float, float]:
        return (_MARGIN + (step - x0) / (x1 - x0) * (w - 2 * _MARGIN),
                h - _MARGIN - (value - y0) / (y1 - y0) * (h - 2 * _MARGIN))

    draw.rectangle([_MARGIN, _MARGIN, w - _MARGIN, h - _MARGIN], outline="black")
    for frac in (0.0, 0.5, 1.0):
        value = y0 + frac * (y1 - y0)
        draw.text((4, xy(x0, value)[1] - 6), f"{value:.3g}", fill="black")
        step = x0 + frac * (x1 - x0)
        draw.text((xy(step, y0)[0] - 10, h - _MARGIN + 6), f"{step:.0f}", fill="black")
    draw.text((w // 2 - 20, h - 20), "step", fill="black")
    for row, (tag, data) in enumerate(series.items()):
        colour = _COLOURS[tag]
        coords = [xy(s, v) for s, v in data]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=2)
        for x, y in coords if len(coords) < 40 else coords[-1:]:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((w - _MARGIN - 150, _MARGIN + 8 + 16 * row), f"{tag} (last {data[-1][1]:.4g})", fill=colour)
    path = Path(tensorboard_dir) / CURVE_FILE
    img.save(path)
    return path
