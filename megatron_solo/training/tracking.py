"""Where the training scalars go: tensorboard and, when asked, Weights & Biases, behind one interface.

The rate line's logger writes every scalar once, to :class:`Trackers`, which hands it to each writer:
tensorboard and W&B get the same tags, values and steps. W&B is optional (``pip install
megatron_solo[wandb]``) and honours its own environment (``WANDB_MODE=offline`` writes the run under
``wandb/`` without a network; ``wandb sync`` uploads it later). A run resumed from a checkpoint
continues the W&B run that trained it: the run id is recorded in the save folder (``wandb_run.json``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from megatron_solo.config.train import TrainConfig
from megatron_solo.errors import UserInputError

RUN_FILE = "wandb_run.json"  # in the save folder: {"project": ..., "id": ...} of the W&B run training it


class ScalarWriter(Protocol):
    """One destination of the training scalars."""

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        """Record ``value`` of ``tag`` at optimizer step ``step``."""

    def close(self) -> None:
        """Flush and release the destination."""


@dataclass(frozen=True)
class WandbSettings:
    """The W&B run of a training job."""

    project: str
    name: str | None = None  # the run's display name (W&B picks one when None)
    dir: str | None = None  # W&B writes its files under DIR/wandb (None: the working directory)
    save_dir: str | None = None  # holds RUN_FILE, so a resumed run continues the same W&B run
    resumed: bool = False  # this job resumes from a checkpoint of save_dir
    config: dict[str, Any] = field(default_factory=dict)  # the job's settings, shown beside the run


def check_wandb(train: TrainConfig) -> None:
    """UserInputError when the job asks for W&B and ``wandb`` is not installed (checked on every rank)."""
    if train.wandb_project is not None and importlib.util.find_spec("wandb") is None:
        raise UserInputError("--wandb-project needs the wandb package: pip install 'megatron_solo[wandb]'")


def wandb_settings(train: TrainConfig, resumed: bool, config: dict[str, Any]) -> WandbSettings | None:
    """The W&B run ``train`` asks for (None without a project); its files beside tensorboard's, else the save folder."""
    if train.wandb_project is None:
        return None
    return WandbSettings(train.wandb_project, train.wandb_run_name, train.tensorboard_dir or train.save_dir,
                         train.save_dir, resumed, config)


def continued_run_id(settings: WandbSettings) -> str | None:
    """The id of the W&B run a resumed job continues: the one its save folder records for this project."""
    if not settings.resumed or settings.save_dir is None:
        return None
    path = Path(settings.save_dir) / RUN_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise UserInputError(f"{path}: unreadable W&B run record ({err}); remove it to start a new W&B run") from None
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        raise UserInputError(f"{path}: expected {{\"project\": ..., \"id\": ...}}; remove it to start a new W&B run")
    return record["id"] if record.get("project") == settings.project else None


def record_run_id(save_dir: str | None, project: str, run_id: str) -> None:
    """Write RUN_FILE into the save folder (atomically: a killed write leaves the previous record)."""
    if save_dir is None:
        return
    path = Path(save_dir) / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"project": project, "id": run_id}) + "\n")
    os.replace(tmp, path)


class TensorboardWriter:
    """tensorboard event files in ``log_dir``."""

    def __init__(self, log_dir: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        """One event."""
        self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        """Flush the event file."""
        self.writer.close()


class WandbWriter:
    """One W&B run: a new one, or the one a resumed job continues."""

    def __init__(self, settings: WandbSettings) -> None:
        import wandb

        run_id = continued_run_id(settings)  # None: W&B makes a new run (and id)
        if settings.dir is not None:
            Path(settings.dir).mkdir(parents=True, exist_ok=True)
        try:
            # console="off": the rate line stays on stdout as it is; its figures reach W&B as scalars
            self.run = wandb.init(project=settings.project, name=settings.name, dir=settings.dir, id=run_id,
                                  resume="allow", config=settings.config, settings=wandb.Settings(console="off"))
        except wandb.errors.Error as err:  # not logged in, no network, a bad project name
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserInputError(f"W&B project {settings.project!r}: the run did not start ({first}); "
                                 "WANDB_MODE=offline needs no network (wandb sync uploads it later)") from None
        record_run_id(settings.save_dir, settings.project, self.run.id)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        """Log at ``step`` (W&B merges the tags logged at one step into one row)."""
        self.run.log({tag: value}, step=step)

    def close(self) -> None:
        """Finish the run (offline: its files are complete on disk)."""
        self.run.finish()


class Trackers:
    """Every destination of the training scalars; each gets every scalar."""

    def __init__(self, writers: list[ScalarWriter]) -> None:
        self.writers = writers

    @property
    def tensorboard_dir(self) -> str | None:
        """The tensorboard folder, where one is written."""
        return next((w.log_dir for w in self.writers if isinstance(w, TensorboardWriter)), None)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        """Hand one scalar to every writer."""
        for writer in self.writers:
            writer.add_scalar(tag, value, step)

    def close(self) -> None:
        """Close every writer."""
        for writer in self.writers:
            writer.close()


def open_trackers(tensorboard_dir: str | None, wandb: WandbSettings | None) -> Trackers:
    """The writers a job asks for: tensorboard where it has a folder, W&B where it has settings."""
    writers: list[ScalarWriter] = []
    if tensorboard_dir:
        writers.append(TensorboardWriter(tensorboard_dir))
    if wandb is not None:
        writers.append(WandbWriter(wandb))
    return Trackers(writers)
