"""The error every user-facing input problem derives from.

A tool catches :class:`UserInputError` and prints its one-line message (exit 2); any other
exception is an internal error and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserInputError(ValueError):
    """Input a user can fix (a path, a flag, a file's content); the message names what is at fault."""


def run_tool(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command line's ``main``: a user error is one line on stderr and exit 2, no traceback.

    User errors are :class:`UserInputError` and a missing input path (FileNotFoundError); any other
    exception is an internal error and keeps its traceback.
    """
    try:
        return main(argv) or 0
    except (UserInputError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
