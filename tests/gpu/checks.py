"""What the GPU checks share: how they run, what a machine lacks for them, their tolerances, and
the record of what each one measured.

``SOLO_GPU_CHECKS=cpu-smoke`` runs them on the CPU with tiny shapes, the local spec in the thd
layout standing in for Transformer Engine, so their logic runs where no GPU is. Unset, they need
CUDA (and TE where they compare it). ``SOLO_GPU_RESULTS=DIR`` keeps each check's figures, goal
and outcome as ``DIR/<test>.json`` (written when the check starts, rewritten as it measures), which ``benchmarks/gpu/report.py`` turns into the results
table; the figures are also pytest properties (``--junitxml``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
import torch

MODE_ENV = "SOLO_GPU_CHECKS"
RESULTS_ENV = "SOLO_GPU_RESULTS"
SMOKE = "cpu-smoke"

BF16_TOL = 2e-2  # of the logit scale: what bf16 keeps over a few layers (tests/model/test_solo_model.py)
FP32_TOL = 1e-4  # export vs Megatron, both fp32
LOSS_TOL = 2e-2  # relative: the same training step under two bf16 kernel sets


def smoke() -> bool:
    """True on the CPU smoke run (``SOLO_GPU_CHECKS=cpu-smoke``); any other value is refused."""
    value = os.environ.get(MODE_ENV, "")
    if value not in ("", SMOKE):
        raise pytest.UsageError(f"{MODE_ENV}={value!r}: set it to {SMOKE!r} or leave it unset")
    return value == SMOKE


def cuda_missing() -> str | None:
    """Why a GPU check cannot run here (None when it can)."""
    if smoke() or torch.cuda.is_available():
        return None
    return f"needs CUDA, which torch {torch.__version__} does not see ({MODE_ENV}={SMOKE} runs it on the CPU, tiny)"


def te_missing() -> str | None:
    """Why Transformer Engine cannot run here (None when it can, or when the smoke run stands in for it)."""
    if smoke():
        return None
    if importlib.util.find_spec("transformer_engine") is None:
        return "needs Transformer Engine: the transformer_engine package is not installed"
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as exc:  # a broken install says why
        return f"needs Transformer Engine: import transformer_engine.pytorch failed: {type(exc).__name__}: {exc}"[:400]
    return None


def te_impl() -> str:
    """The layer implementation under test as "TE": TE itself, or the local spec on the smoke run."""
    return "local" if smoke() else "te"


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| over the reference's logit scale (at least 1)."""
    return float((a.float() - ref.float()).abs().max() / max(1.0, float(ref.float().abs().max())))


def device_name() -> str:
    """The GPU's name, or "cpu"."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


class Figures:
    """One check's measured figures, goal and outcome, rewritten to its JSON file as they come."""

    def __init__(self, node: pytest.Item, record_property) -> None:
        self._record_property = record_property
        callspec = getattr(node, "callspec", None)
        self.data: dict = {"check": node.originalname, "param": callspec.id if callspec else None,
                           "test": node.nodeid, "mode": SMOKE if smoke() else "gpu", "device": device_name(),
                           "goal": None, "figures": {}}
        folder = os.environ.get(RESULTS_ENV)
        name = re.sub(r"[^\w.-]+", "_", f"{node.module.__name__}.{node.name}").strip("_")
        self.path = Path(folder) / f"{name}.json" if folder else None

    def start(self) -> None:
        """Write the record before the check's fixtures run, so a check killed inside them still shows (cut short)."""
        self._write()

    def record(self, **values) -> None:
        """Add measured figures (also as pytest properties) and rewrite the file, so a cut-short run keeps them."""
        self.data["figures"].update(values)
        for key, value in values.items():
            self._record_property(key, value)
        self._write()

    def goal(self, text: str) -> None:
        """What the check asserts, as the results table states it (built from the tolerance constant)."""
        self.data["goal"] = text
        self._write()

    def finish(self, report: pytest.TestReport | None) -> None:
        """Record the test's outcome (and its failure line) from pytest's report of it."""
        if report is None:
            return
        failed_setup = report.when == "setup" and report.failed
        self.data["outcome"] = "error" if failed_setup else report.outcome
        self.data["duration_s"] = round(report.duration, 2)
        crash = getattr(report.longrepr, "reprcrash", None)
        if report.failed:
            self.data["error"] = (crash.message if crash else str(report.longrepr))[:600]
        self._write()

    def _write(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.data, indent=1, default=str))


def record_setup_outcome(item: pytest.Item, report: pytest.TestReport) -> None:
    """A check whose setup did not pass (skipped where TE is missing, or failed) records that outcome, so the
    record written at its start does not read as a run cut short."""
    if report.when == "setup" and not report.passed and "figures" in getattr(item, "fixturenames", ()):
        Figures(item, lambda *_: None).finish(report)
