"""The error every user-facing input problem derives from, and how a command line reports it.

A tool catches :class:`UserInputError` and prints its one-line message (exit 2); any other
exception is an internal error and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable

# Variables a multi-process launcher sets in every process it starts: torchrun (torchelastic) and srun.
LAUNCHER_VARIABLES = ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK")


# Notices megatron-core prints on import where the optional accelerators are absent (every CPU run):
# expected, and nothing a tool's user must act on. Prefixes of the messages, as PYTHONWARNINGS takes them.
BACKEND_NOTICES = ("Transformer Engine and Apex are not installed", "Apex is not installed")

# The operating system's refusals of a path; from a tool they are the user's path at fault.
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


class UserInputError(ValueError):
    """Input a user can fix (a path, a flag, a file's content); the message names what is at fault."""


class ToolArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (unknown flag, bad choice, missing option) are one-line user errors."""

    def error(self, message: str):
        """Raise instead of printing the usage and exiting (run_tool prints the one line)."""
        raise UserInputError(f"{self.prog}: {message} (see --help)")


def launcher_variable(env: dict[str, str] | None = None) -> str | None:
    """``NAME=value`` of the first variable saying this process was started by torchrun or srun, else None."""
    env = os.environ if env is None else env
    for name in LAUNCHER_VARIABLES:
        if name in env:
            return f"{name}={env[name]}"
    tasks = env.get("SLURM_STEP_NUM_TASKS")
    if tasks is not None and tasks.isdigit() and int(tasks) > 1:
        return f"SLURM_STEP_NUM_TASKS={tasks}"
    return None


def quiet_backend_notices() -> None:
    """Silence :data:`BACKEND_NOTICES` here and, through PYTHONWARNINGS, in worker processes started later."""
    import warnings

    for prefix in BACKEND_NOTICES:
        warnings.filterwarnings("ignore", message=re.escape(prefix))
    given = os.environ.get("PYTHONWARNINGS")
    entries = [f"ignore:{prefix}" for prefix in BACKEND_NOTICES]
    os.environ["PYTHONWARNINGS"] = ",".join(([given] if given else []) + entries)


def run_tool(main: Callable[[list[str]], int | None], argv: list[str] | None = None, *,
             own_workers: bool = False) -> int:
    """Run a command line's ``main`` on ``argv`` (default: this process's arguments): a user error is one line
    on stderr and exit 2, no traceback.

    User errors are :class:`UserInputError` and the operating system's refusals of a path the user
    named (missing, not a folder, a folder, no permission); any other exception is an internal error
    and keeps its traceback. ``own_workers``: the tool starts its own
    worker processes, so running it under a launcher (every launched copy would start a world of its
    own, and they wait on each other forever) is refused before ``main`` runs.
    megatron-core's notices about absent accelerators are silenced (in modules ``main`` imports, and in
    its workers).
    """
    quiet_backend_notices()
    try:
        if own_workers:
            found = launcher_variable()
            if found is not None:
                tool = os.path.basename(sys.argv[0]) or "this tool"
                raise UserInputError(f"{tool} starts its own worker processes: run it with plain python, not "
                                     f"under torchrun or srun with several tasks ({found} is set)")
        return main(sys.argv[1:] if argv is None else argv) or 0
    except (UserInputError, *PATH_ERRORS) as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2
