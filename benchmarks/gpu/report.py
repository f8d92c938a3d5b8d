"""Gather the parts of benchmarks/gpu/run.sh into one JSON and a markdown table for benchmarks/RESULTS.md.

Reads what the parts left: the pytest logs in ``--out``, and in ``--parts`` each GPU check's record
(``checks/``, ``SOLO_GPU_RESULTS``: written when the check starts and rewritten as it measures, so a
check cut short by its time limit keeps what it measured), the environment, the speed table's JSON
and the timeline of the parts (exit code, limit, end time); writes ``gpu_results.json`` and
``results.md`` to ``--out``. run.sh runs it after every part, so the report is whole whenever the
machine goes away. Every figure in the table comes from those files; a part that did not run, was
cut short, or crashed says so, and so does each check it did not reach.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

GOALS = {"te_mfu": 0.50, "fp8_speedup": 1.3}
# The pytest logs run.sh leaves in $OUT, and what each ran.
PYTEST_LOGS = {
    "pytest_checks_te": "tests/gpu: TE equivalence and round trip",
    "pytest_te": "suite, TE importable",
    "pytest_checks_fp8": "tests/gpu: FP8",
    "pytest_local": "suite, SOLO_TRANSFORMER_IMPL=local",
    "pytest_checks_attention": "tests/gpu: packed attention",
}
# check (test function in tests/gpu) -> (title, figure): templates over its recorded figures and
# "param" (the test's parameter id); the order is the table's.
CHECK_ROWS = {
    "test_te_logits_match_the_fp32_reference": (
        "TE vs fp32 local reference, {param}",
        "TE {te_vs_fp32:.2%}, local bf16 {local_bf16_vs_fp32:.2%} of the logit scale (window {window})"),
    "test_a_pack_gives_what_its_documents_give_alone": (
        "TE: a pack vs its documents alone, {param}", "{pack_vs_documents_alone:.2%} of the logit scale"),
    "test_te_honours_the_sliding_window": (
        "sliding window honoured by TE",
        "window {window} changes logits by {window_effect_fp32:.2%} (reference), {window_effect_te:.2%} (TE); "
        "TE's error {worst_te_error:.2%}"),
    "test_te_spec_loads_the_import_and_learns": (
        "HF -> import -> TE training",
        "loads the import: {te_loads_import}; loss {first_loss:.3f} -> {last_loss:.3f} in {steps} steps"),
    "test_local_spec_resumes_the_te_checkpoint": (
        "TE checkpoint resumed under the local spec",
        "optimizer resumed: {resumed_optimizer}, at step {resumed_iteration}; logits local vs TE "
        "{local_vs_te_logits:.2%}; next {steps_compared} losses differ by {loss_rel_diff:.2%}"),
    "test_export_gives_the_megatron_logits": (
        "export -> stock transformers ({model_class})", "{export_vs_megatron_fp32:.2e} of the logit scale (fp32)"),
    "test_the_te_training_step_does_not_wait_on_the_gpu": (
        "TE training step: host syncs", "{host_syncs} synchronizing CUDA calls in a forward step and backward"),
    "test_fp8_final_loss_within_2pct_of_bf16": (
        "FP8 ({fp8_leg}) vs bf16, {steps} steps",
        "final loss {fp8_end:.4f} vs {bf16_end:.4f} ({rel_diff:.2%}; from {bf16_start:.3f})"),
    "test_fp8_checkpoint_resumes_in_a_fresh_process": (
        "FP8 checkpoint resumed at step {resumed_from}",
        "next {resumed_steps} losses differ by at most {max_rel_diff:.2e} (relative)"),
    "test_packed_attention_matches_the_masked_reference": (
        "packed attention, {backend}, window {window}",
        "output {max_rel_out_err:.2%}, gradients {rel_grad_err:.2%} off the fp32 reference ({tokens} tokens)"),
}
OUTCOMES = {"passed": "pass", "failed": "FAIL", "error": "ERROR", "skipped": "skipped"}
# The part each check runs in (its tests/gpu file), so a part cut short lists the checks it did not reach.
CHECK_PARTS = {
    "pytest_checks_te": ("test_te_logits_match_the_fp32_reference", "test_a_pack_gives_what_its_documents_give_alone",
                         "test_te_honours_the_sliding_window", "test_te_spec_loads_the_import_and_learns",
                         "test_local_spec_resumes_the_te_checkpoint", "test_export_gives_the_megatron_logits",
                         "test_the_te_training_step_does_not_wait_on_the_gpu"),
    "pytest_checks_fp8": ("test_fp8_final_loss_within_2pct_of_bf16", "test_fp8_checkpoint_resumes_in_a_fresh_process"),
    "pytest_checks_attention": ("test_packed_attention_matches_the_masked_reference",),
}
# Parts and speed rows that are Transformer Engine's: failed unless TE imported (the smoke run has none to import).
TE_PARTS = ("pytest_checks_te", "pytest_te", "pytest_checks_fp8")
TE_IMPLS = ("te", "te-fp8")
KILLED = (124, 137)  # timeout's exit codes: the part ran into its limit
# TE's own line naming the attention backend it picked (NVTE_DEBUG=1 NVTE_DEBUG_LEVEL=1)
TE_BACKEND_LINE = re.compile(r"Running with (\w+) backend(?: \((?:version|sub-backend) ([^)]*)\))?")
SPEED_KEY = re.compile(r"train_seq(\d+)_(.+)_L(\d+)$")


def read_json(path: Path) -> dict:
    """The JSON object in ``path``, else {} (absent, or cut off mid-write)."""
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def pytest_summary(path: Path) -> dict:
    """Counts from a pytest log's last summary line ("3 failed, 90 passed, 2 skipped in 70s")."""
    if not path.is_file():
        return {"ran": False}
    text = path.read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if re.search(r"\b(passed|failed|errors?|skipped)\b", ln) and " in " in ln]
    out: dict = {"ran": True, "summary": lines[-1].strip("= ") if lines else "no summary (cut short?)"}
    for count, word in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)", lines[-1] if lines else ""):
        out[word.rstrip("s") if word.startswith("error") else word] = int(count)
    out["failures"] = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.M)[:40]
    return out


def read_timeline(path: Path) -> dict:
    """part -> {"exit", "start_s", "end_s", "limit_s"} (or {"skipped": why}) from run.sh's timeline.txt."""
    parts: dict = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, *fields = line.split()
        if fields[:1] == ["skipped"]:
            parts[name] = {"skipped": " ".join(fields[1:]) or "budget"}
            continue
        values = dict(f.split("=", 1) for f in fields if "=" in f)
        parts[name] = {k: int(v) for k, v in values.items() if v.lstrip("-").isdigit()}
    return parts


def te_backends(text: str) -> list[str]:
    """The attention backends TE says it ran with in a log, in order, each once ("FusedAttention (1)")."""
    found = []
    for name, detail in TE_BACKEND_LINE.findall(text):
        label = f"{name} ({detail})" if detail else name
        if label not in found:
            found.append(label)
    return found


def pct(x) -> str:
    """A fraction as a percentage, or a dash."""
    return "-" if x is None else f"{100 * x:.2f}%"


def fmt(x, spec: str = ".3g") -> str:
    """A number in ``spec``, or a dash."""
    return "-" if x is None else format(x, spec)


def suite_result(summary: dict, part: dict | None = None) -> str:
    """not run / cut short (killed at its limit) / FAIL (a failure or error) / pass / skipped (nothing ran)."""
    part = part or {}
    if "skipped" in part:
        return f"not run ({part['skipped']} spent)" if part["skipped"] == "budget" else f"not run ({part['skipped']})"
    if part.get("exit") in KILLED:
        return f"cut short at its {part.get('limit_s', '?')} s limit"
    if not summary.get("ran"):
        return "not run"
    if summary.get("failed", 0) + summary.get("error", 0) or ("passed" not in summary and "skipped" not in summary):
        return "FAIL"
    return "pass" if summary.get("passed", 0) else "skipped"



def read_checks(folder: Path) -> dict:
    """file stem -> record of every check that left one in ``folder`` (tests/gpu/checks.py's Figures)."""
    out = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = read_json(path)
        if record.get("check"):
            out[path.stem] = record
    return out


def _fill(template: str, values: dict) -> str | None:
    try:
        return template.format_map(values)
    except (KeyError, ValueError, TypeError):  # a figure the check did not get to record
        return None


def check_row(record: dict, no_te: str | None = None) -> str:
    """The markdown row of one check's record: title, outcome (``no_te`` for a TE check where TE did not import,
    unless it failed anyway), measured figures, goal."""
    figures = record.get("figures", {})
    values = {**figures, "param": record.get("param")}
    title, figure = CHECK_ROWS.get(record["check"], ("{check}", ""))
    title = _fill(title, {**values, "check": record["check"]}) or record["check"]
    text = _fill(figure, values) if figure else None
    if text is None:  # no template, or figures missing: say what there is
        text = "; ".join(f"{k} {v}" for k, v in figures.items() if isinstance(v, (int, float, str, bool)))
    if record.get("error"):
        text = f"{text}; {record['error'][:200]}" if text else record["error"][:200]
    result = OUTCOMES.get(record.get("outcome"), "cut short")
    if no_te and result != "FAIL":
        result = no_te
    return f"| {title} | {result} | {text or '-'} | {record.get('goal') or '-'} |"


def te_failed(res: dict) -> str | None:
    """Why every TE row fails (TE did not import on a GPU run), else None."""
    te_import = res.get("environment", {}).get("te_import")
    if res.get("smoke") or te_import == "ok":
        return None
    return f"FAIL (TE did not import: {te_import or 'not recorded'})"[:200]


def correctness_rows(res: dict) -> list[str]:
    """Markdown rows of the correctness checks: each pytest run, then each check's figures (and those not reached)."""
    rows, timeline, no_te = [], res.get("timeline", {}), te_failed(res)
    for key, name in PYTEST_LOGS.items():
        p = res.get("pytest", {}).get(key, {})
        result = no_te if no_te and key in TE_PARTS else suite_result(p, timeline.get(key))
        rows.append(f"| {name} | {result} | {p.get('summary', '-')} | all pass |")
    backends = res.get("te_attention", {}).get("checks")
    if backends:
        rows.append(f"| TE attention backend, TE checks | {', '.join(backends)} | NVTE_DEBUG log | fused or flash |")
    order = {name: i for i, name in enumerate(CHECK_ROWS)}
    records = sorted(res.get("checks", {}).items(), key=lambda kv: (order.get(kv[1]["check"], len(order)), kv[0]))
    for _, record in records:
        part = next((k for k, checks in CHECK_PARTS.items() if record["check"] in checks), None)
        rows.append(check_row(record, no_te if part in TE_PARTS else None))
    seen = {record["check"] for record in res.get("checks", {}).values()}
    for part, checks in CHECK_PARTS.items():
        state = timeline.get(part, {})
        if state.get("exit") in KILLED or "skipped" in state:
            why = "part cut short before it" if state.get("exit") in KILLED else "part not run"
            rows += [f"| {check} | not reached ({why}) | - | - |" for check in checks if check not in seen]
    return rows


def part_rows(res: dict) -> list[str]:
    """Markdown rows of the parts' time use: limit, seconds taken, exit code (124/137: killed at the limit)."""
    rows = []
    for name, part in res.get("timeline", {}).items():
        if "skipped" in part:
            rows.append(f"| {name} | - | - | not run ({part['skipped']}) |")
            continue
        took = part["end_s"] - part["start_s"] if "start_s" in part and "end_s" in part else None
        state = "killed at its limit" if part.get("exit") in KILLED else f"exit {part.get('exit', '?')}"
        rows.append(f"| {name} | {part.get('limit_s', '-')} s | {fmt(took, 'd')} s | {state} |")
    return rows


def speed_runs(speed: dict) -> dict:
    """impl -> its timing entry; an entry without "impl" (a crash recorded by the runner) takes it from its key,
    and a measured entry wins over a failed attempt at another layer count."""
    runs: dict = {}
    for key, value in speed.items():
        match = SPEED_KEY.match(key)
        if not match or not isinstance(value, dict):
            continue
        entry = {"impl": match.group(2), "seq": int(match.group(1)), "layers": int(match.group(3)), **value}
        if "tokens_per_s" in entry or "tokens_per_s" not in runs.get(entry["impl"], {}):
            runs[entry["impl"]] = entry
    return runs


def speed_failure(r: dict, smoke: bool, no_te: str | None) -> str | None:
    """Why a timing row is a failure, else None: a crash, TE absent, or TE's unfused attention at 7B width."""
    if "error" in r:
        return f"CRASHED: {r['error'].splitlines()[0][:160] if r['error'] else 'no message'}"
    if no_te and r["impl"] in TE_IMPLS:
        return no_te
    backend = r.get("te_attention_backend") or ""
    if not smoke and r["impl"] in TE_IMPLS and "Unfused" in backend:
        return f"FAIL: TE ran {backend} (an unfused fallback) at 7B width"
    return None


def speed_rows(res: dict) -> tuple[list[str], dict]:
    """Markdown rows of the timing table (a crash is a row that says so), and the goal verdicts."""
    runs, smoke, no_te = speed_runs(res.get("speed", {})), res.get("smoke", False), te_failed(res)
    te = runs.get("te", {})
    rows, verdict, failed = [], {}, {}
    for impl in ("local", "te", "te-fp8", "peer"):
        r = runs.get(impl)
        if r is None:
            continue
        failed[impl] = speed_failure(r, smoke, no_te)
        attention = r.get("te_attention_backend") or r.get("attention_backend") or "-"
        if "tokens_per_s" not in r:
            rows.append(f"| {impl} | {failed[impl] or 'skipped: ' + str(r.get('skipped'))} | | | | | {attention} |")
            continue
        vs = r["tokens_per_s"] / te["tokens_per_s"] if "tokens_per_s" in te else None
        note = f" ({failed[impl]})" if failed[impl] else ""
        rows.append(f"| {impl}{note} | {r['tokens_per_s']:,.0f} | {r['tflops_per_s']:.0f} | {pct(r['mfu'])} | "
                    f"{fmt(r.get('peak_mem_gib'), '.1f')} GiB | {fmt(vs, '.2f')}x | {attention} |")
    fp8 = runs.get("te-fp8", {})
    if "mfu" in te:
        verdict["te_bf16_mfu"] = {"value": te["mfu"], "goal": GOALS["te_mfu"],
                                  "met": te["mfu"] >= GOALS["te_mfu"] and not failed.get("te")}
    elif failed.get("te"):
        verdict["te_bf16_mfu"] = {"value": None, "goal": GOALS["te_mfu"], "met": False, "why": failed["te"]}
    if "tokens_per_s" in fp8 and "tokens_per_s" in te:
        speedup = fp8["tokens_per_s"] / te["tokens_per_s"]
        verdict["fp8_speedup"] = {"value": speedup, "goal": GOALS["fp8_speedup"],
                                  "met": speedup >= GOALS["fp8_speedup"] and not (failed.get("te") or failed.get("te-fp8"))}
    elif failed.get("te-fp8") or ("tokens_per_s" in fp8 and failed.get("te")):
        verdict["fp8_speedup"] = {"value": None, "goal": GOALS["fp8_speedup"], "met": False,
                                  "why": failed.get("te-fp8") or failed.get("te")}
    return rows, verdict


def markdown(res: dict) -> str:
    """The results as the markdown section RESULTS.md takes."""
    env = res.get("environment", {})
    lines = [f"## Transformer Engine check, {res['date']}", "",
             f"Device: {env.get('device', '-')}; torch {env.get('torch', '-')}, Transformer Engine "
             f"{env.get('transformer_engine', '-')} (import: {env.get('te_import', '-')}), megatron-core "
             f"{env.get('megatron_core', '-')}"
             f"{' (CPU smoke run: no TE, local thd layout stands in for it)' if res.get('smoke') else ''}.", "",
             "| check | result | figure | goal |", "|---|---|---|---|", *correctness_rows(res), ""]
    rows, verdict = speed_rows(res)
    if rows:
        shape = next((v for v in res.get("speed", {}).values() if isinstance(v, dict) and "microbatches" in v), {})
        lines += [f"Training step, solo-7b width, {shape.get('layers', '-')} layers, {shape.get('seq', '-')} tokens "
                  f"x {shape.get('microbatches', '-')} micro-batches, distributed optimizer (peer: transformers, "
                  f"AdamW, bf16 autocast); MFU against 989 TFLOP/s dense bf16 for every row:", "",
                  "| implementation | tokens/s | TFLOP/s | MFU | peak memory | vs TE bf16 | attention |",
                  "|---|---|---|---|---|---|---|", *rows, ""]
        for name, v in verdict.items():
            value = "not measured" if v["value"] is None else f"{v['value']:.3g}"
            why = f" ({v['why']})" if v.get("why") else ""
            lines.append(f"- {name}: {value}{why} (goal {v['goal']}): {'met' if v['met'] else 'NOT met'}")
        lines.append("")
    parts = part_rows(res)
    if parts:
        lines += ["Parts (run.sh): limit, time taken, how each ended:", "", "| part | limit | took | end |",
                  "|---|---|---|---|", *parts]
    return "\n".join(lines) + "\n"


def gather(parts: Path, out: Path, smoke: bool) -> dict:
    """Everything the parts left so far, as one dict (what gpu_results.json holds)."""
    pytest_logs = {key: out / f"{key}.txt" for key in PYTEST_LOGS}
    speed_backend = [v.get("te_attention_backend") for v in read_json(parts / "speed.json").values()
                     if isinstance(v, dict) and v.get("te_attention_backend")]
    checks_log = pytest_logs["pytest_checks_te"]
    return {
        "date": time.strftime("%Y-%m-%d"), "smoke": smoke,
        "environment": read_json(parts / "environment.json"),
        "pytest": {key: pytest_summary(path) for key, path in pytest_logs.items()},
        "checks": read_checks(parts / "checks"),
        "speed": read_json(parts / "speed.json"),
        "te_attention": {"checks": te_backends(checks_log.read_text(errors="replace")) if checks_log.is_file() else [],
                         "speed": speed_backend},
        "timeline": read_timeline(parts / "timeline.txt"),
    }


def main() -> None:
    """Parse arguments, gather, write gpu_results.json and results.md."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", required=True, help="the folder run.sh's parts write their records to")
    ap.add_argument("--out", required=True, help="folder for gpu_results.json and results.md (the pytest logs too)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="do not print the table")
    args = ap.parse_args()
    out = Path(args.out)
    res = gather(Path(args.parts), out, args.smoke)
    text = markdown(res)
    for name, content in (("gpu_results.json", json.dumps(res, indent=1, default=str)), ("results.md", text)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(content)
        tmp.replace(out / name)  # whole or not at all, if the machine goes away mid-write
    if not args.quiet:
        print(text)


if __name__ == "__main__":
    main()
