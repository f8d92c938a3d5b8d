"""Run the command-line tools as a user would, and check a refusal is one line on stderr."""

from __future__ import annotations

import subprocess
import sys

from tests.harness.paths import REPO, user_env


def run_cli(name: str, *args, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """``python tools/<name> args`` without launcher variables and with warnings shown (what a user sees)."""
    base = user_env(drop=("PYTHONWARNINGS",), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(REPO / "tools" / name), *map(str, args)], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def one_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """The single stderr line of a refused run (exit 2, no traceback) containing ``fragments``."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
