"""Where the repository and its command-line tools are, for tests that run them as a user would."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
