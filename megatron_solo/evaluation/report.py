"""The evaluation report: one JSON file (metrics, per-item predictions, captions) and a printed table.

The table is one row group per task (:data:`.registry.TASKS`), in the registry's order; benchmarks in the
paper's layout (benchmark, metric, score; per-category rows below), judge-only ones labelled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from megatron_solo.evaluation.errors import EvaluationError
from megatron_solo.evaluation.registry import TASKS


def check_report_path(path: str | os.PathLike) -> None:
    """EvaluationError unless a report can be written at ``path`` (checked before the evaluation runs)."""
    path = Path(path)
    if path.is_dir():
        raise EvaluationError(f"--out {path}: is a folder; name the report file, e.g. {path / 'report.json'}")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise EvaluationError(f"--out {path}: cannot create it ({parent} is not a writable folder)")
    if path.exists() and not os.access(path, os.W_OK):
        raise EvaluationError(f"--out {path}: exists and is not writable")


def write_report(report: dict, path: str | os.PathLike) -> Path:
    """Write ``report`` as JSON at ``path`` (atomically: a reader never sees half a report)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False))
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise EvaluationError(f"--out {path}: cannot write the report ({err.strerror or err})") from None
    return path


def _rows(report: dict) -> list[tuple[str, str, str, str, str]]:
    return [row for name, task in TASKS.items() if report.get(name) for row in task.rows(report[name])]


def format_table(report: dict) -> str:
    """The report's metrics as a fixed-width table, then the generated captions."""
    model = report.get("model", {})
    lines = [" ".join(str(model[k]) for k in ("backend", "layout", "dtype") if k in model)
             + f"  {model.get('checkpoint') or model.get('model', '')}"]
    header = ("task", "metric", "value", "evaluated", "images/s")
    rows = [header, *_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    for item in report.get("captions", {}).get("items", []):
        lines.append(f"caption {Path(item['image']).name}: {item['caption']!r}")
    c = report.get("classification") or {}
    if "logreg_baseline" in c:
        b = c["logreg_baseline"]
        resized = (f", {b['resized_images']} resized to {b['image_size'][1]}x{b['image_size'][0]}"
                   if b.get("resized_images") else "")
        lines.append(f"held-out accuracy: {100 * c['top1']:.2f}% (SOLO, {c['samples']} images) vs "
                     f"{100 * b['accuracy']:.2f}% (logistic regression on the same pixels, trained on {b['train']}"
                     f"{resized})")
    return "\n".join(lines)
