"""Worker worlds of the conversions, whose user errors reach the caller as themselves.

torch.multiprocessing hands a failed worker's exception to the parent as a ProcessRaisedException
holding only a traceback text, so a user error deep in a worker (a path, a field of a file) would
become an internal error with a traceback. Workers started here record a :class:`UserInputError`
in a report folder; the parent raises it again, with its own class and message.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from megatron_solo.errors import UserInputError
from megatron_solo.platform import spawn


def _guarded(report: str, fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except UserInputError as err:
        kind = type(err)
        Path(report, f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(
            {"module": kind.__module__, "name": kind.__qualname__, "message": str(err)}))
        raise


def _reported(report: str) -> UserInputError | None:
    """The first user error a worker recorded (lowest rank), rebuilt with its class where possible."""
    files = sorted(Path(report).glob("rank*.json"), key=lambda f: int(f.stem[4:]))
    if not files:
        return None
    found = json.loads(files[0].read_text())
    try:
        kind = getattr(importlib.import_module(found["module"]), found["name"])
        if isinstance(kind, type) and issubclass(kind, UserInputError):
            return kind(found["message"])
    except Exception:  # a class that cannot be rebuilt from its message: the base class carries it
        pass
    return UserInputError(found["message"])


def run_workers(fn: Callable[..., Any], world_size: int, *args: Any) -> None:
    """``spawn(fn, world_size, *args)``; a UserInputError raised in a worker is raised here as itself."""
    with tempfile.TemporaryDirectory(prefix="solo_workers_") as report:
        try:
            spawn(_guarded, world_size, report, fn, *args)
        except Exception:
            user = _reported(report)
            if user is None:
                raise
            raise user from None
