"""The GPU check's report (benchmarks/gpu/report.py) states what the parts measured, and only that."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

from tests.harness.paths import REPO


def _report():
    spec = importlib.util.spec_from_file_location("gpu_report", REPO / "benchmarks" / "gpu" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pytest_summary_counts_and_failures(tmp_path):
    report = _report()
    log = tmp_path / "p.txt"
    log.write_text("....F.E\nFAILED tests/test_model.py::test_a[bf16] - KeyError\n"
                   "ERROR tests/test_x.py::test_b\n= 1 failed, 90 passed, 2 skipped, 1 error in 70.1s =\n")
    s = report.pytest_summary(log)
    assert (s["failed"], s["passed"], s["skipped"], s["error"]) == (1, 90, 2, 1)
    assert s["failures"] == ["tests/test_model.py::test_a[bf16]", "tests/test_x.py::test_b"]
    cut = tmp_path / "cut.txt"
    cut.write_text("....\n")  # killed by its time limit: no summary line
    assert report.pytest_summary(cut)["summary"].startswith("no summary")
    assert report.pytest_summary(tmp_path / "absent.txt") == {"ran": False}


def _timing(impl, tokens_per_s, mfu):
    return {"impl": impl, "seq": 8192, "layers": 8, "microbatches": 8, "tokens_per_s": tokens_per_s,
            "tflops_per_s": mfu * 989, "mfu": mfu, "peak_mem_gib": 50.0}


def test_goals_are_judged_from_the_measured_figures(tmp_path):
    report = _report()
    speed = {"train_seq8192_te_L8": _timing("te", 40_000, 0.52), "train_seq8192_te-fp8_L8": _timing("te-fp8", 48_000, 0.62),
             "train_seq8192_local_L8": _timing("local", 37_000, 0.44),
             "train_seq8192_peer_L8": {"impl": "peer", "error": "exit 1"}}
    rows, verdict = report.speed_rows({"speed": speed})
    assert verdict["te_bf16_mfu"]["met"] and not verdict["fp8_speedup"]["met"]
    assert abs(verdict["fp8_speedup"]["value"] - 1.2) < 1e-9
    assert any(r.startswith("| te-fp8 | 48,000 |") and "1.20x" in r for r in rows)
    assert any(r.startswith("| peer | exit 1") for r in rows)
    # nothing measured: no verdict at all, rather than an invented one
    assert report.speed_rows({"speed": {"train_seq8192_te_L8": {"impl": "te", "skipped": "deadline"}}})[1] == {}


def _record(folder: Path, monkeypatch, check: str, param: str | None, outcome: str | None, **figures) -> None:
    """A check's record as tests/gpu/checks.py writes it: figures, goal, and the outcome unless cut short."""
    from tests.gpu.checks import RESULTS_ENV, Figures

    monkeypatch.setenv(RESULTS_ENV, str(folder))
    node = SimpleNamespace(originalname=check, name=f"{check}[{param}]" if param else check, nodeid=f"x.py::{check}",
                           callspec=SimpleNamespace(id=param) if param else None, module=SimpleNamespace(__name__="x"))
    record = Figures(node, lambda *_: None)
    record.goal("<= 2% of the logit scale")
    record.record(**figures)
    if outcome:
        crash = SimpleNamespace(reprcrash=SimpleNamespace(message="AssertionError: off by 9.00%"))
        record.finish(SimpleNamespace(when="call", outcome=outcome, failed=outcome == "failed", duration=1.0,
                                      longrepr=crash if outcome == "failed" else None))


def test_report_states_each_checks_recorded_figures_and_outcome(tmp_path, monkeypatch):
    report = _report()
    scratch, out = tmp_path / "scratch", tmp_path / "out"
    out.mkdir()
    checks = scratch / "checks"
    _record(checks, monkeypatch, "test_te_logits_match_the_fp32_reference", "window", "passed", window=64,
            te_vs_fp32=0.004, local_bf16_vs_fp32=0.005, te_vs_local_bf16=0.003)
    _record(checks, monkeypatch, "test_te_logits_match_the_fp32_reference", "no_window", "failed", window=None,
            te_vs_fp32=0.09, local_bf16_vs_fp32=0.005, te_vs_local_bf16=0.09)
    _record(checks, monkeypatch, "test_fp8_checkpoint_resumes_in_a_fresh_process", None, None, resumed_from=125)
    (out / "pytest_checks_te.txt").write_text("..F\n= 1 failed, 2 passed in 50.0s =\n")
    (out / "pytest_checks_fp8.txt").write_text("ss\n= 2 skipped in 3.0s =\n")
    monkeypatch.setattr(sys, "argv", ["report.py", "--scratch", str(scratch), "--out", str(out)])
    report.main()
    md = (out / "results.md").read_text()
    assert ("| TE vs fp32 local reference, window | pass | TE 0.40%, local bf16 0.50% of the logit scale (window 64) "
            "| <= 2% of the logit scale |") in md
    assert "| TE vs fp32 local reference, no_window | FAIL | TE 9.00%, local bf16 0.50% of the logit scale " \
           "(window None); AssertionError: off by 9.00% |" in md
    # killed before its losses came: it says so, with what it had recorded
    assert "| FP8 checkpoint resumed at step 125 | cut short | resumed_from 125 |" in md
    assert "| tests/gpu: TE equivalence and round trip | FAIL | 1 failed, 2 passed in 50.0s |" in md
    assert "| tests/gpu: FP8 | skipped | 2 skipped in 3.0s |" in md
    assert "| suite, TE importable | not run |" in md
    saved = json.loads((out / "gpu_results.json").read_text())["checks"]
    assert {r["outcome"] for r in saved.values() if "outcome" in r} == {"passed", "failed"}
