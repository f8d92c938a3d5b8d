"""The GPU check's report (benchmarks/gpu/report.py) states what the parts measured, and only that."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _report():
    spec = importlib.util.spec_from_file_location("gpu_report", ROOT / "benchmarks" / "gpu" / "report.py")
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


def test_report_reads_progress_files_of_parts_cut_short(tmp_path, monkeypatch):
    report = _report()
    scratch, out = tmp_path / "scratch", tmp_path / "out"
    (scratch / "te_work").mkdir(parents=True)
    out.mkdir()
    (scratch / "te_work" / "parts.json").write_text(json.dumps({"equivalence": {
        "window_None": {"te_vs_fp32": 0.004, "local_bf16_vs_fp32": 0.004, "pack_vs_documents_alone": 0.001, "ok": True},
        "window_effect_fp32": 0.3, "window_effect_te": 0.3, "ok": True}}))
    monkeypatch.setattr(sys, "argv", ["report.py", "--scratch", str(scratch), "--out", str(out)])
    report.main()
    md = (out / "results.md").read_text()
    assert "| TE vs fp32 local reference, window_None | pass | TE 0.40%" in md
    assert "| suite, TE importable | not run |" in md
    assert json.loads((out / "gpu_results.json").read_text())["te_checks"]["equivalence"]["ok"] is True
