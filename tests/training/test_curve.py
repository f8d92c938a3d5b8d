"""loss_curve.png: log-scale loss, training and validation, spikes and skipped steps where the counts rose."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from megatron_solo.training.curve import CURVE_FILE, CurveData, loss_figure, rises, write_loss_curve


def _events(folder, scalars: dict[str, list[tuple[int, float]]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for tag, series in scalars.items():
        for step, value in series:
            writer.add_scalar(tag, value, step)
    writer.close()


def test_counts_mark_the_steps_where_they_rose():
    assert rises([(1, 0), (2, 1), (3, 1), (4, 3), (5, 3)]) == [2, 4]
    assert rises([(7, 2), (8, 2)]) == [7]  # a resumed run's first value already counts earlier events


def test_the_curve_reads_the_event_files_and_draws_on_a_log_axis(tmp_path):
    train = [(s, 10.0 * 0.5 ** s) for s in range(1, 31)] + [(31, 5e4), (32, math.nan), (33, 1e-3)]
    _events(tmp_path, {"train/loss": train, "val/loss": [(10, 0.02), (30, 1e-8)],
                       "train/spikes": [(s, 0 if s < 31 else 1) for s in range(1, 34)],
                       "train/skipped_steps": [(s, 0 if s < 32 else 1) for s in range(1, 34)]})
    data = CurveData.read(tmp_path)
    assert (data.spikes, data.skipped) == ([31], [32]) and [s for s, _ in data.val] == [10, 30]
    fig = loss_figure(data)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    lines = {line.get_gid(): line for line in ax.get_lines()}
    # the NaN step is left out of the line (it is a skipped step, drawn as a vertical line)
    assert list(lines["train"].get_xdata()) == list(range(1, 32)) + [33]
    assert lines["train"].get_ydata()[30] == 5e4 and lines["val"].get_ydata()[1] == pytest.approx(1e-8)  # float32 events
    assert list(lines["skipped"].get_xdata()) == [32, 32]
    (spikes,) = [c for c in ax.collections if c.get_gid() == "spikes"]
    assert spikes.get_offsets().tolist() == [[31, 5e4]]
    # the lowest and highest losses are both inside the axis: nothing falls flat onto it
    low, high = ax.get_ylim()
    assert low <= 1e-8 and high >= 5e4
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == [
        "loss spike (1)", "skipped step (1)", "train", "validation"]

    path = write_loss_curve(tmp_path)
    assert path == tmp_path / CURVE_FILE
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (900, 550)


def test_no_loss_logged_draws_nothing(tmp_path):
    _events(tmp_path, {"train/lr": [(1, 1e-3)]})
    assert write_loss_curve(tmp_path) is None and not (tmp_path / CURVE_FILE).exists()
