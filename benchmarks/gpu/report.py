"""Gather the parts of benchmarks/gpu/run.sh into one JSON and a markdown table for benchmarks/RESULTS.md.

Reads what each part left in the scratch folder (also a part cut short by its time limit: its
progress files) and writes ``gpu_results.json`` and ``results.md`` to ``--out``. Every figure in
the table comes from those files; a part that did not run says so.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

GOALS = {"te_mfu": 0.50, "fp8_speedup": 1.3}


def read_json(*paths: Path) -> dict:
    """The first of ``paths`` that holds JSON, else {}."""
    for path in paths:
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:
                continue
    return {}


def pytest_summary(path: Path) -> dict:
    """Counts from a pytest log's last summary line ("3 failed, 90 passed, 2 skipped in 70s")."""
    if not path.is_file():
        return {"ran": False}
    text = path.read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if re.search(r"\b(passed|failed|error)\b", ln) and " in " in ln]
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


def ok(flag) -> str:
    """pass / FAIL / not run."""
    return "not run" if flag is None else ("pass" if flag else "FAIL")


def correctness_rows(res: dict) -> list[str]:
    """Markdown rows of the correctness checks."""
    rows = []
    for name, key in (("suite, TE importable", "pytest_te"), ("suite, SOLO_TRANSFORMER_IMPL=local", "pytest_local")):
        p = res.get(key, {})
        flag = None if not p.get("ran") else (p.get("failed", 0) + p.get("error", 0) == 0 and p.get("passed", 0) > 0)
        rows.append(f"| {name} | {ok(flag)} | {p.get('summary', '-')} | all pass |")
    eq = res.get("te_checks", {}).get("equivalence", {})
    for key, value in eq.items():
        if key.startswith("window_") and isinstance(value, dict):
            rows.append(f"| TE vs fp32 local reference, {key} | {ok(value.get('ok'))} | "
                        f"TE {pct(value.get('te_vs_fp32'))}, local bf16 {pct(value.get('local_bf16_vs_fp32'))} "
                        f"of the logit scale; pack vs documents alone {pct(value.get('pack_vs_documents_alone'))} | <= 2% |")
    if "window_effect_fp32" in eq:
        rows.append(f"| sliding window honoured by TE | {ok(eq.get('ok'))} | window changes logits by "
                    f"{pct(eq['window_effect_fp32'])} (reference), {pct(eq.get('window_effect_te'))} (TE) | "
                    f"> 3x the TE error |")
    if "error" in eq:
        rows.append(f"| TE vs local | FAIL | {eq['error'][:200]} | |")
    rt = res.get("te_checks", {}).get("roundtrip", {})
    if rt and "error" not in rt:
        rows.append(f"| HF -> import -> 20 TE steps -> resume under local spec | {ok(rt.get('ok_training'))} | "
                    f"TE loads the import: {rt.get('te_loads_import')}; optimizer resumed: {rt.get('resumed_optimizer')}; "
                    f"logits local vs TE "
                    f"{pct(rt.get('local_vs_te_logits_at_20'))}; next 5 losses differ by "
                    f"{pct(rt.get('loss_rel_diff_21_25'))} | <= 2% |")
    elif rt:
        rows.append(f"| HF -> TE training -> local resume | FAIL | {rt['error'][:200]} | |")
    ex = res.get("te_checks", {}).get("export", {})
    if ex:
        rows.append(f"| export -> stock transformers ({ex.get('model_class', '-')}) | {ok(ex.get('ok'))} | "
                    f"{fmt(ex.get('export_vs_megatron_fp32'), '.2e')} of the logit scale (fp32) | <= 1e-4 |")
    fp8 = res.get("fp8", {})
    curve, resume = fp8.get("curve"), fp8.get("resume")
    if curve:
        rows.append(f"| FP8 ({fp8.get('fp8_leg')}) vs bf16, {fp8.get('steps')} steps | {ok(curve.get('ok'))} | "
                    f"final loss {fmt(curve['fp8_end'], '.4f')} vs {fmt(curve['bf16_end'], '.4f')} "
                    f"({pct(curve['rel_diff'])}; from {fmt(curve['bf16_start'], '.3f')}) | <= 2% |")
    if resume:
        rows.append(f"| FP8 checkpoint resumed at step {resume['from']} | {ok(resume.get('ok'))} | "
                    f"next {len(resume['resumed'])} losses differ by at most {fmt(resume['max_rel_diff'], '.2e')} "
                    f"(relative) | <= 1e-3 |")
    for key in ("curves_error", "resume_error"):
        if key in fp8:
            rows.append(f"| FP8 {key.split('_')[0]} | FAIL | {fp8[key][-200:]} | |")
    return rows


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
        "pytest_te": pytest_summary(out / "pytest_te.txt"),
        "pytest_local": pytest_summary(out / "pytest_local.txt"),
        "te_checks": read_json(s / "te.json", s / "te_work" / "parts.json"),
        "fp8": read_json(s / "fp8.json", s / "fp8_work" / "curves.json"),
        "speed": read_json(s / "speed.json"),
        "timeline": (s / "timeline.txt").read_text().splitlines() if (s / "timeline.txt").is_file() else [],
    }
    (out / "gpu_results.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "results.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
