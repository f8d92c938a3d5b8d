"""Gather the parts of benchmarks/gpu/run.sh into one JSON and a markdown table for benchmarks/RESULTS.md.

Reads what the parts left: the pytest logs in ``--out``, each GPU check's record in the scratch
folder's ``checks/`` (``SOLO_GPU_RESULTS``: its measured figures, goal and outcome, rewritten as
the test goes, so a check cut short by its time limit keeps what it measured), the environment
and the speed table's JSON; writes ``gpu_results.json`` and ``results.md`` to ``--out``. Every
figure in the table comes from those files; a part that did not run says so.
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


def pct(x) -> str:
    """A fraction as a percentage, or a dash."""
    return "-" if x is None else f"{100 * x:.2f}%"


def fmt(x, spec: str = ".3g") -> str:
    """A number in ``spec``, or a dash."""
    return "-" if x is None else format(x, spec)


def suite_result(summary: dict) -> str:
    """not run / FAIL (a failure or error) / pass (something passed) / skipped (nothing ran)."""
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


def check_row(record: dict) -> str:
    """The markdown row of one check's record: title, outcome, measured figures, goal."""
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
    return f"| {title} | {result} | {text or '-'} | {record.get('goal') or '-'} |"


def correctness_rows(res: dict) -> list[str]:
    """Markdown rows of the correctness checks: each pytest run, then each check's figures."""
    rows = []
    for key, name in PYTEST_LOGS.items():
        p = res.get("pytest", {}).get(key, {})
        rows.append(f"| {name} | {suite_result(p)} | {p.get('summary', '-')} | all pass |")
    order = {name: i for i, name in enumerate(CHECK_ROWS)}
    records = sorted(res.get("checks", {}).items(), key=lambda kv: (order.get(kv[1]["check"], len(order)), kv[0]))
    return rows + [check_row(record) for _, record in records]


def speed_rows(res: dict) -> tuple[list[str], dict]:
    """Markdown rows of the timing table, and the goal verdicts."""
    speed = res.get("speed", {})
    runs = {v["impl"]: v for k, v in speed.items() if k.startswith("train_") and isinstance(v, dict) and "impl" in v}
    te = runs.get("te", {})
    rows, verdict = [], {}
    for impl in ("local", "te", "te-fp8", "peer"):
        r = runs.get(impl)
        if r is None:
            continue
        if "tokens_per_s" not in r:
            rows.append(f"| {impl} | {r.get('skipped') or r.get('error', '')[:120]} | | | | |")
            continue
        vs = r["tokens_per_s"] / te["tokens_per_s"] if "tokens_per_s" in te else None
        rows.append(f"| {impl} | {r['tokens_per_s']:,.0f} | {r['tflops_per_s']:.0f} | {pct(r['mfu'])} | "
                    f"{fmt(r.get('peak_mem_gib'), '.1f')} GiB | {fmt(vs, '.2f')}x |")
    if "mfu" in te:
        verdict["te_bf16_mfu"] = {"value": te["mfu"], "goal": GOALS["te_mfu"], "met": te["mfu"] >= GOALS["te_mfu"]}
    fp8 = runs.get("te-fp8", {})
    if "tokens_per_s" in fp8 and "tokens_per_s" in te:
        speedup = fp8["tokens_per_s"] / te["tokens_per_s"]
        verdict["fp8_speedup"] = {"value": speedup, "goal": GOALS["fp8_speedup"], "met": speedup >= GOALS["fp8_speedup"]}
    return rows, verdict


def markdown(res: dict) -> str:
    """The results as the markdown section RESULTS.md takes."""
    env = res.get("environment", {})
    lines = [f"## Transformer Engine check, {res['date']}", "",
             f"Device: {env.get('device', '-')}; torch {env.get('torch', '-')}, Transformer Engine "
             f"{env.get('transformer_engine', '-')}, megatron-core {env.get('megatron_core', '-')}"
             f"{' (CPU smoke run: no TE, local thd layout stands in for it)' if res.get('smoke') else ''}.", "",
             "| check | result | figure | goal |", "|---|---|---|---|", *correctness_rows(res), ""]
    rows, verdict = speed_rows(res)
    if rows:
        shape = next((v for k, v in res.get("speed", {}).items() if isinstance(v, dict) and "seq" in v), {})
        lines += [f"Training step, solo-7b width, {shape.get('layers', '-')} layers, {shape.get('seq', '-')} tokens "
                  f"x {shape.get('microbatches', '-')} micro-batches, distributed optimizer (peer: transformers, "
                  f"AdamW, bf16 autocast); MFU against 989 TFLOP/s dense bf16 for every row:", "",
                  "| implementation | tokens/s | TFLOP/s | MFU | peak memory | vs TE bf16 |", "|---|---|---|---|---|---|",
                  *rows, ""]
        for name, v in verdict.items():
            lines.append(f"- {name}: {v['value']:.3g} (goal {v['goal']}): {'met' if v['met'] else 'NOT met'}")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse arguments, gather, write gpu_results.json and results.md."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scratch", required=True, help="the folder run.sh's parts wrote to")
    ap.add_argument("--out", required=True, help="folder for gpu_results.json and results.md")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    s, out = Path(args.scratch), Path(args.out)
    res = {
        "date": time.strftime("%Y-%m-%d"), "smoke": args.smoke,
        "environment": read_json(s / "environment.json"),
        "pytest": {key: pytest_summary(out / f"{key}.txt") for key in PYTEST_LOGS},
        "checks": read_checks(s / "checks"),
        "speed": read_json(s / "speed.json"),
        "timeline": (s / "timeline.txt").read_text().splitlines() if (s / "timeline.txt").is_file() else [],
    }
    (out / "gpu_results.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "results.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
