"""The GPU check's report (benchmarks/gpu/report.py) states what the parts measured, and only that: a part cut
short keeps the checks it started and names those it did not reach, a crashed timing is a row that says so,
TE rows fail where TE did not import, and TE's attention backend is stated (an unfused one at 7B width fails)."""

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
    rows, verdict = report.speed_rows({"speed": speed, "environment": {"te_import": "ok"}})
    assert verdict["te_bf16_mfu"]["met"] and not verdict["fp8_speedup"]["met"]
    assert abs(verdict["fp8_speedup"]["value"] - 1.2) < 1e-9
    assert any(r.startswith("| te-fp8 | 48,000 |") and "1.20x" in r for r in rows)
    assert any(r.startswith("| peer | CRASHED: exit 1 |") for r in rows)
    # nothing measured: no verdict at all, rather than an invented one
    skipped = {"train_seq8192_te_L8": {"impl": "te", "skipped": "deadline"}}
    assert report.speed_rows({"speed": skipped, "environment": {"te_import": "ok"}})[1] == {}


def _node(check: str, param: str | None = None) -> SimpleNamespace:
    """A pytest item of a GPU check, as far as tests/gpu/checks.py reads one."""
    return SimpleNamespace(originalname=check, name=f"{check}[{param}]" if param else check, nodeid=f"x.py::{check}",
                           callspec=SimpleNamespace(id=param) if param else None, module=SimpleNamespace(__name__="x"),
                           fixturenames=["figures"])


def _record(folder: Path, monkeypatch, check: str, param: str | None, outcome: str | None, **figures) -> None:
    """A check's record as tests/gpu/checks.py writes it: figures, goal, and the outcome unless cut short."""
    from tests.gpu.checks import RESULTS_ENV, Figures

    monkeypatch.setenv(RESULTS_ENV, str(folder))
    record = Figures(_node(check, param), lambda *_: None)
    record.goal("<= 2% of the logit scale")
    record.record(**figures)
    if outcome:
        crash = SimpleNamespace(reprcrash=SimpleNamespace(message="AssertionError: off by 9.00%"))
        record.finish(SimpleNamespace(when="call", outcome=outcome, failed=outcome == "failed", duration=1.0,
                                      longrepr=crash if outcome == "failed" else None))


def _run_report(report, monkeypatch, parts: Path, out: Path, *flags: str) -> str:
    monkeypatch.setattr(sys, "argv", ["report.py", "--parts", str(parts), "--out", str(out), "--quiet", *flags])
    report.main()
    return (out / "results.md").read_text()


def _folders(tmp_path: Path, te_import: str = "ok") -> tuple[Path, Path]:
    parts, out = tmp_path / "parts", tmp_path / "out"
    (parts / "checks").mkdir(parents=True)
    out.mkdir()
    (parts / "environment.json").write_text(json.dumps({"device": "NVIDIA H200", "transformer_engine": "2.11.0",
                                                        "te_import": te_import}))
    return parts, out


def test_report_states_each_checks_recorded_figures_and_outcome(tmp_path, monkeypatch):
    report = _report()
    scratch, out = _folders(tmp_path)
    checks = scratch / "checks"
    _record(checks, monkeypatch, "test_te_logits_match_the_fp32_reference", "window", "passed", window=64,
            te_vs_fp32=0.004, local_bf16_vs_fp32=0.005, te_vs_local_bf16=0.003)
    _record(checks, monkeypatch, "test_te_logits_match_the_fp32_reference", "no_window", "failed", window=None,
            te_vs_fp32=0.09, local_bf16_vs_fp32=0.005, te_vs_local_bf16=0.09)
    _record(checks, monkeypatch, "test_fp8_checkpoint_resumes_in_a_fresh_process", None, None, resumed_from=125)
    (out / "pytest_checks_te.txt").write_text("..F\n= 1 failed, 2 passed in 50.0s =\n")
    (out / "pytest_checks_fp8.txt").write_text("ss\n= 2 skipped in 3.0s =\n")
    md = _run_report(report, monkeypatch, scratch, out)
    assert "Transformer Engine 2.11.0 (import: ok)" in md
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


def test_a_part_cut_short_keeps_the_checks_it_started_and_names_those_it_did_not_reach(tmp_path, monkeypatch):
    from tests.gpu import conftest
    from tests.gpu.checks import RESULTS_ENV, record_setup_outcome

    report = _report()
    parts, out = _folders(tmp_path)
    monkeypatch.setenv(RESULTS_ENV, str(parts / "checks"))
    # killed inside the module fixture every equivalence check waits on: only the setup hook had run
    conftest.pytest_runtest_setup(_node("test_te_logits_match_the_fp32_reference", "no_window"))
    (out / "pytest_checks_te.txt").write_text("[INFO | DotProductAttention]: Running with FusedAttention backend "
                                              "(sub-backend 1)\n")
    (parts / "timeline.txt").write_text("pytest_checks_te exit=124 start_s=31 end_s=111 limit_s=80\n"
                                        "pytest_te skipped budget\n")
    # a check skipped in its setup (no TE) is skipped, not cut short
    skipped = _node("test_te_spec_loads_the_import_and_learns")
    conftest.pytest_runtest_setup(skipped)
    record_setup_outcome(skipped, SimpleNamespace(when="setup", passed=False, failed=False, outcome="skipped",
                                                  duration=0.1, longrepr=None))
    md = _run_report(report, monkeypatch, parts, out)
    assert "| HF -> import -> TE training | skipped |" in md
    assert "| tests/gpu: TE equivalence and round trip | cut short at its 80 s limit | no summary (cut short?) |" in md
    assert "| TE vs fp32 local reference, no_window | cut short | - |" in md
    assert "| test_te_honours_the_sliding_window | not reached (part cut short before it) |" in md
    assert "| test_export_gives_the_megatron_logits | not reached (part cut short before it) |" in md
    assert "| suite, TE importable | not run (budget spent) |" in md
    assert "| test_fp8_final_loss_within_2pct_of_bf16 |" not in md  # its part was never started: no claim about it
    assert "| TE attention backend, TE checks | FusedAttention (1) |" in md
    assert "| pytest_checks_te | 80 s | 80 s | killed at its limit |" in md
    assert "| pytest_te | - | - | not run (budget) |" in md


def test_a_crashed_timing_is_a_row_that_says_so(tmp_path, monkeypatch):
    report = _report()
    parts, out = _folders(tmp_path)
    # what gpu_checks.guarded records when the runner itself fails: an error and a trace, no "impl"
    speed = {"train_seq8192_te_L8": _timing("te", 40_000, 0.52),
             "train_seq8192_te-fp8_L8": {"error": "RuntimeError: CUDA error: an illegal memory access\nmore",
                                         "trace": "Traceback ..."}}
    (parts / "speed.json").write_text(json.dumps(speed))
    md = _run_report(report, monkeypatch, parts, out)
    assert "| te-fp8 | CRASHED: RuntimeError: CUDA error: an illegal memory access | | | | | - |" in md
    assert "- fp8_speedup: not measured (CRASHED: RuntimeError: CUDA error: an illegal memory access) " \
           "(goal 1.3): NOT met" in md
    assert "| te | 40,000 |" in md


def test_te_rows_fail_where_te_did_not_import_and_an_unfused_backend_fails_at_7b_width(tmp_path, monkeypatch):
    report = _report()
    parts, out = _folders(tmp_path, te_import="ImportError: libcudnn_graph.so.9: cannot open shared object file")
    _record(parts / "checks", monkeypatch, "test_fp8_final_loss_within_2pct_of_bf16", None, "skipped")
    (out / "pytest_te.txt").write_text("= 90 passed in 50.0s =\n")
    (out / "pytest_local.txt").write_text("= 20 passed in 10.0s =\n")
    speed = {"train_seq8192_te_L8": {"impl": "te", "skipped": "Transformer Engine is not usable here"},
             "train_seq8192_local_L8": {**_timing("local", 37_000, 0.44), "attention_backend": "flex"}}
    (parts / "speed.json").write_text(json.dumps(speed))
    md = _run_report(report, monkeypatch, parts, out)
    failed = "FAIL (TE did not import: ImportError: libcudnn_graph.so.9: cannot open shared object file)"
    assert "(import: ImportError: libcudnn_graph.so.9" in md
    assert f"| suite, TE importable | {failed} | 90 passed in 50.0s |" in md
    assert "| suite, SOLO_TRANSFORMER_IMPL=local | pass |" in md
    assert f"| test_fp8_final_loss_within_2pct_of_bf16 | {failed} |" in md
    assert f"| te | {failed} | | | | | - |" in md
    assert "| local | 37,000 |" in md and "| flex |" in md
    # the smoke run has no TE to import: its stand-in rows are not failed for it
    assert f"| suite, TE importable | {failed}" not in _run_report(report, monkeypatch, parts, out, "--smoke")

    unfused = {"train_seq8192_te_L8": {**_timing("te", 20_000, 0.30), "te_attention_backend": "UnfusedDotProductAttention"}}
    parts2, out2 = _folders(tmp_path / "unfused")
    (parts2 / "speed.json").write_text(json.dumps(unfused))
    md = _run_report(report, monkeypatch, parts2, out2)
    assert "| te (FAIL: TE ran UnfusedDotProductAttention (an unfused fallback) at 7B width) | 20,000 |" in md
    assert "- te_bf16_mfu: 0.3 (goal 0.5): NOT met" in md
