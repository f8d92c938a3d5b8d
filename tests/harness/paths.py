"""Where the repository and its command-line tools are, and the environment a user runs them in."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
# set by torchrun, Slurm or a test's own world: a tool started with them would take itself for a rank
LAUNCHERS = ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_STEP_NUM_TASKS", "MASTER_ADDR",
             "MASTER_PORT")


def user_env(drop: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
    """This process's environment without launcher variables (and ``drop``), plus ``extra``."""
    base = {k: v for k, v in os.environ.items() if k not in LAUNCHERS and k not in drop}
    return {**base, **extra}
