"""The scratch folder of a GPU check: one it makes, or one the caller names that is new or empty."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def scratch_folder(given: str | None, prefix: str) -> Path:
    """A new temp folder, or ``given`` if new or empty; a check never clears a folder it did not make."""
    work = Path(given or tempfile.mkdtemp(prefix=prefix))
    if work.exists() and any(work.iterdir()):
        sys.exit(f"error: --work {work} is not empty; give a new folder")
    work.mkdir(parents=True, exist_ok=True)
    return work
