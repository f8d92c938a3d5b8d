"""The rate line and tensorboard scalars of the training loop, and the tally of dropped data."""

from __future__ import annotations

import pytest

from megatron_solo.training.curve import read_scalars
from megatron_solo.training.data_loss import DataLossTally
from megatron_solo.training.progress import RANK_TIME_TAGS, TrainLogger
from megatron_solo.training.rank_times import RankTimes


def test_rate_line_names_val_loss_and_drops_only_when_there(capsys, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = TrainLogger(True, str(tmp_path), total_steps=10)
    log.step(3, {"loss": 2.5, "lr": 1e-3, "grad_norm": None}, tokens=1000, seconds=0.5)
    log.step(4, {"loss": 2.4, "lr": 1e-3, "grad_norm": 1.0}, tokens=1000, seconds=0.25, val_loss=2.75,
             dropped_samples=7)
    log.data(4, 7, 700)
    log.close()
    first, second, curve = capsys.readouterr().out.splitlines()
    assert curve == f"loss curve: {tmp_path / 'loss_curve.png'}" and (tmp_path / "loss_curve.png").stat().st_size > 0
    assert first == "step 3/10 | loss 2.5 | lr 0.001 | 2,000 tokens/s | 0.50 s/step"
    assert second == "step 4/10 | loss 2.4 | lr 0.001 | grad_norm 1 | val_loss 2.75 | dropped 7 samples | " \
                     "4,000 tokens/s | 0.25 s/step"
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    read = lambda tag: [(e.step, e.value) for e in events.Scalars(tag)]  # noqa: E731
    assert read("val/loss") == [(4, 2.75)] and read("train/loss") == [(3, 2.5), (4, 2.4000000953674316)]
    assert read("data/dropped_samples") == [(4, 7.0)] and read("data/dropped_tokens") == [(4, 700.0)]


def test_the_rate_line_names_the_data_parallel_ranks_step_times(capsys, tmp_path):
    log = TrainLogger(True, str(tmp_path), total_steps=10)
    log.step(5, {"loss": 2.0}, tokens=1000, seconds=0.5, ranks=RankTimes(0.31, 0.33, 1.5, 3, 4))
    log.step(6, {"loss": 1.9}, tokens=1000, seconds=0.5, ranks=RankTimes(0.3, 0.3, 0.3, 0, 1))  # one rank
    log.close()
    five, six, _ = capsys.readouterr().out.splitlines()
    assert five.endswith("| 0.50 s/step | ranks min/median/max 0.31/0.33/1.50 s (slowest: dp rank 3)")
    assert six.endswith("| 0.50 s/step")
    times = read_scalars(tmp_path, tuple(RANK_TIME_TAGS.values()))
    assert times == {"train/rank_step_time_min": [(5, pytest.approx(0.31)), (6, pytest.approx(0.3))],
                     "train/rank_step_time_median": [(5, pytest.approx(0.33)), (6, pytest.approx(0.3))],
                     "train/rank_step_time_max": [(5, 1.5), (6, pytest.approx(0.3))]}


def test_only_the_logging_rank_prints(capsys):
    log = TrainLogger(False, None, total_steps=2)
    log.step(1, {"loss": 1.0}, tokens=1, seconds=1.0, val_loss=1.0)
    log.info("hello")
    assert capsys.readouterr().out == ""


class _Epochs:
    """A dataset of 10 packs per epoch dropping (epoch + 1) samples of 5 tokens in each epoch."""

    def locate(self, g: int) -> tuple[int, int]:
        return g // 10, g % 10

    def overflow_report(self, epoch: int) -> dict:
        return {"a": {"samples_dropped": epoch + 1, "tokens_dropped": 5 * (epoch + 1)},
                "b": {"samples_dropped": 0, "tokens_dropped": 0}}


def test_drops_count_once_per_epoch_reached():
    tally = DataLossTally(_Epochs())
    assert tally.update(0) and (tally.samples, tally.tokens) == (1, 5)
    assert not tally.update(9) and tally.samples == 1
    assert tally.update(10) and tally.samples == 1 + 2
    assert tally.update(35) and (tally.samples, tally.tokens) == (1 + 2 + 3 + 4, 50)  # epochs 2 and 3 at once
