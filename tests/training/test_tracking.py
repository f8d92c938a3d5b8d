"""W&B beside tensorboard: the same scalars, offline files read back, a resumed job continues its W&B run."""

from __future__ import annotations

import json
import sys

import pytest

from megatron_solo.config.train import TrainConfig
from megatron_solo.errors import UserInputError
from megatron_solo.training.curve import read_scalars
from megatron_solo.training.progress import TrainLogger
from megatron_solo.training.rank_times import RankTimes
from megatron_solo.training.tracking import RUN_FILE, check_wandb, continued_run_id, wandb_settings
from tests.harness.wandb_files import offline_runs

pytest.importorskip("wandb")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def _train(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(tensorboard_dir=str(tmp_path / "tb"), save_dir=str(tmp_path / "ckpt"), wandb_project="solo",
                       wandb_run_name="tiny", **kw)


def _log(train: TrainConfig, resumed: bool, steps: range) -> None:
    logger = TrainLogger(True, train.tensorboard_dir, steps[-1],
                         wandb=wandb_settings(train, resumed, {"train": {"lr": 1e-3}}))
    logger.data(steps[0], 3, 300)
    for s in steps:
        logger.step(s, {"loss": 10.0 / s, "lr": 1e-3, "grad_norm": None if s == 2 else 0.5}, tokens=1000,
                    seconds=0.5, val_loss=2.0 if s == 3 else None, ranks=RankTimes(0.1, 0.2, 0.4 + s, 1, 4))
    logger.close()


def test_wandb_gets_every_scalar_tensorboard_gets_and_a_resume_continues_the_run(tmp_path, capsys):
    train = _train(tmp_path)
    _log(train, False, range(1, 4))
    _log(train, True, range(4, 6))  # resumed from the save folder: the same W&B run
    first, second = offline_runs(train.tensorboard_dir)
    assert (first.project, first.name, first.config["train"]) == ("solo", "tiny", {"lr": 1e-3})
    assert second.run_id == first.run_id
    assert json.loads((tmp_path / "ckpt" / RUN_FILE).read_text()) == {"project": "solo", "id": first.run_id}
    assert [s for s, _ in first.history["train/loss"]] == [1, 2, 3]
    assert [s for s, _ in second.history["train/loss"]] == [4, 5]

    wandb_series = {tag: first.history.get(tag, []) + second.history.get(tag, [])
                    for tag in first.history.keys() | second.history.keys()}
    board = read_scalars(train.tensorboard_dir, tuple(wandb_series) + ("train/grad_norm", "val/loss"))
    assert wandb_series.keys() == board.keys()  # no tag only one of them has
    assert "train/rank_step_time_max" in board and board["val/loss"] == [(3, 2.0)]
    for tag, series in board.items():  # tensorboard stores float32
        assert [s for s, _ in wandb_series[tag]] == [s for s, _ in series], tag
        assert [v for _, v in wandb_series[tag]] == pytest.approx([v for _, v in series], rel=1e-6), tag
    assert "loss curve:" in capsys.readouterr().out

    _log(train, False, range(1, 2))  # a fresh start in the same save folder: a new W&B run
    assert offline_runs(train.tensorboard_dir)[-1].run_id != first.run_id


def test_a_record_of_another_project_or_a_broken_one(tmp_path):
    train = _train(tmp_path)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / RUN_FILE).write_text(json.dumps({"project": "other", "id": "abc"}))
    _log(train, True, range(1, 2))
    (run,) = offline_runs(train.tensorboard_dir)
    assert run.run_id != "abc"
    (tmp_path / "ckpt" / RUN_FILE).write_text("{not json")
    with pytest.raises(UserInputError, match=f"{RUN_FILE}: unreadable W&B run record"):
        continued_run_id(wandb_settings(train, True, {}))


def test_wandb_asked_for_without_wandb_installed_is_a_user_error(tmp_path, monkeypatch):
    check_wandb(_train(tmp_path))
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserInputError, match=r"--wandb-project needs the wandb package: pip install"):
        check_wandb(_train(tmp_path))
    check_wandb(TrainConfig())  # not asked for: nothing to check


def test_a_wandb_run_that_cannot_start_is_one_line_naming_the_project(tmp_path, monkeypatch):
    import wandb

    def refuse(**_):
        raise wandb.errors.UsageError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])\nmore")

    monkeypatch.setattr(wandb, "init", refuse)
    with pytest.raises(UserInputError, match=r"^W&B project 'solo': the run did not start \(api_key not configured "
                                             r"\(no-tty\)\. call wandb\.login\(key=\[your_api_key\]\)\); WANDB_MODE=offline"):
        TrainLogger(True, None, 1, wandb=wandb_settings(_train(tmp_path), False, {}))
