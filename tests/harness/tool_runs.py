"""Run a command-line tool's ``main`` in the pytest process, as its entry point does (``run_tool``).

A tool's own process costs seconds of imports; its user errors are checked here instead, with one
test per tool still starting ``python tools/<name>`` (:func:`tests.harness.ckpt_tools.run_cli`) so the
real entry point stays covered. Python warnings raised while ``main`` runs are written to the captured
stderr, as a user would see them, so a one-line check still sees a stray warning.
"""

from __future__ import annotations

import importlib
import subprocess
import warnings
from pathlib import Path

import pytest

from megatron_solo.errors import run_tool


def run_here(capfd: pytest.CaptureFixture, name: str, *args) -> subprocess.CompletedProcess:
    """``tools/<name> args`` through ``run_tool`` in this process: exit code, stdout, stderr."""
    module = importlib.import_module(f"tools.{Path(name).stem}")
    argv = [str(a) for a in args]
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        code = run_tool(module.main, argv)
    out, err = capfd.readouterr()
    err += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught)
    return subprocess.CompletedProcess([name, *argv], code, out, err)
