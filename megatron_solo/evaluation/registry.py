"""The evaluation tasks, one entry each: its report key, the options it reads, how it runs, its report rows.

``tools/evaluate.py``'s options are the fields of :class:`~megatron_solo.config.evaluation.EvalConfig`;
a task runs when the first of its options is set, its paths are checked before any model loads, and the
printed table is the concatenation of the requested tasks' rows. Adding a task is one entry here, its
module and its config field(s). Benchmarks are one more level down: :data:`.benchmarks.BENCHMARKS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from megatron_solo.config.evaluation import EvalConfig
from megatron_solo.evaluation.benchmarks import BENCHMARKS, parse_benchmark, run_benchmark
from megatron_solo.evaluation.errors import EvaluationError
from megatron_solo.evaluation.harnesses import TITLES
from megatron_solo.evaluation.mcq import multiple_choice
from megatron_solo.evaluation.scoring import Backend
from megatron_solo.evaluation.tasks import Settings, captions, classification, validation_loss

Row = tuple[str, str, str, str, str]  # task, metric, value, evaluated, images/s


@dataclass(frozen=True)
class EvalTask:
    """One kind of evaluation."""

    name: str  # its key in the report
    options: tuple[str, ...]  # the EvalConfig fields it reads; the first one asks for it
    run: Callable[[Backend, EvalConfig, Settings], dict]
    rows: Callable[[dict], list[Row]]
    paths: Callable[[EvalConfig], list[tuple[str, str]]]  # (flag, path) that must exist


def rate(task: dict) -> str:
    """Images per second of a task's result, or '-' where it read none."""
    return f"{task['images_per_s']:.2f}" if task.get("images") else "-"


def parse_source(item: str) -> tuple[str, str]:
    """(path, name) of ``PATH`` or ``PATH:NAME``; the name defaults to the folder's (``X/heldout`` for heldout)."""
    from pathlib import Path

    path, sep, name = item.rpartition(":")
    if not sep or not path or "/" in name or Path(item).exists():
        path, name = item, ""
    if not name:
        p = Path(path.rstrip("/"))
        name = f"{p.parent.name}/{p.name}" if p.name == "heldout" and p.parent.name else p.name
    return path, name


def _val_loss(backend: Backend, cfg: EvalConfig, settings: Settings) -> dict:
    out: dict = {}
    for item in cfg.val_data:
        path, name = parse_source(item)
        if name in out:
            raise EvaluationError(f"--val-data: two sources are named {name!r}; name them PATH:NAME")
        out[name] = validation_loss(backend, path, name, settings)
    return out


def _val_rows(result: dict) -> list[Row]:
    return [(f"val loss {name}", "loss", f"{v['loss']:.4f}", f"{v['documents']} docs, {v['tokens']} tokens", rate(v))
            for name, v in result.items()]


def _classification(backend: Backend, cfg: EvalConfig, settings: Settings) -> dict:
    result = classification(backend, cfg.classify, cfg.class_names, cfg.caption_template, settings)
    if cfg.baseline_train:
        from megatron_solo.evaluation.baseline import logistic_regression_baseline

        result["logreg_baseline"] = logistic_regression_baseline(cfg.baseline_train, cfg.classify,
                                                                 backend.processor.patch_size, cfg.max_samples)
    return result


def _classification_rows(c: dict) -> list[Row]:
    return [("classification", "top-1 / top-5", f"{c['top1']:.4f} / {c['top5']:.4f}",
             f"{c['samples']} images, {c['classes']} classes", rate(c))]


def _mcq_rows(m: dict) -> list[Row]:
    rows = []
    for mode in ("loglik", "generate"):
        if mode in m:
            extra = f", {m[mode]['unparsed']} unparsed" if mode == "generate" else ""
            rows.append((f"mcq {mode} ({m['template']})", "accuracy", f"{m[mode]['accuracy']:.4f}",
                         f"{m['questions']} questions{extra}", rate(m)))
    return rows


def _benchmarks(backend: Backend, cfg: EvalConfig, settings: Settings) -> dict:
    out: dict = {}
    for spec in cfg.benchmark:
        name, path = parse_benchmark(spec)
        if name in out:
            raise EvaluationError(f"--benchmark: {name} is given twice")
        out[name] = run_benchmark(backend, name, path, cfg.benchmark_mode, cfg.template, cfg.benchmark_max_new_tokens,
                                  settings)
    return out


def _score(value: float, key: str) -> str:
    return f"{value:.2f}" if key in ("perception", "cognition") else f"{100 * value:.2f}"


def _evaluated(b: dict, score: dict) -> str:
    """What a benchmark's headline counts: circular groups and rows (MMBench), else questions; what was left out."""
    if "groups" in score:
        return f"{score['groups']} circular groups ({score['rows']} rows)"
    video = b.get("skipped_video", 0)
    return f"{b['questions']} questions" + (f", {video} video question{'s' * (video != 1)} left out" if video else "")


def _part_rows(score: dict) -> list[Row]:
    """A benchmark's rows below its headline: MME's subtasks, or the categories and l2 categories."""
    rows: list[Row] = []
    for cat, v in (score.get("subtasks") or score.get("categories") or {}).items():
        if isinstance(v, dict) and "score" in v:  # an MME subtask: acc + acc+, in points
            rows.append((f"  {cat}", "acc + acc+", f"{v['score']:.2f}", f"{v['questions']} questions", ""))
        else:
            acc = v["accuracy"] if isinstance(v, dict) else v
            rows.append((f"  {cat}", "accuracy", _score(acc, "accuracy"), "", ""))
    for cat, acc in (score.get("l2_categories") or {}).items():
        rows.append((f"  {cat} (l2)", "accuracy", _score(acc, "accuracy"), "", ""))
    return rows


def _benchmark_rows(result: dict) -> list[Row]:
    """The paper's layout: benchmark, metric, score (percent; MME in points), per mode and the harness whose rules
    read the answers; categories below."""
    order = list(BENCHMARKS)
    rows: list[Row] = []
    for name in sorted(result, key=order.index):
        b, bench = result[name], BENCHMARKS[name]
        for mode in ("loglik", "generate"):
            if mode not in b:
                continue
            task = f"{bench.title} ({mode}, {TITLES[b['answer_rule']]} rules)"
            for label, key in bench.headline:
                rows.append((task, label, _score(b[mode][key], key), _evaluated(b, b[mode]), rate(b)))
            rows.extend(_part_rows(b[mode]))
    return rows


def _benchmark_paths(cfg: EvalConfig) -> list[tuple[str, str]]:
    return [(f"--benchmark {name}", path) for name, path in map(parse_benchmark, cfg.benchmark)]


TASKS: dict[str, EvalTask] = {t.name: t for t in (
    EvalTask("val_loss", ("val_data",), _val_loss, _val_rows,
             lambda cfg: [("--val-data", parse_source(v)[0]) for v in cfg.val_data]),
    EvalTask("classification", ("classify", "class_names", "caption_template", "baseline_train"),
             _classification, _classification_rows,
             lambda cfg: [("--classify", cfg.classify), ("--class-names", cfg.class_names),
                          ("--baseline-train", cfg.baseline_train)]),
    EvalTask("mcq", ("mcq", "mcq_mode", "template", "mcq_max_new_tokens"),
             lambda backend, cfg, s: multiple_choice(backend, cfg.mcq, cfg.mcq_mode, cfg.template,
                                                     cfg.mcq_max_new_tokens, s),
             _mcq_rows, lambda cfg: [("--mcq", cfg.mcq)]),
    EvalTask("benchmarks", ("benchmark", "benchmark_mode", "template", "benchmark_max_new_tokens"), _benchmarks,
             _benchmark_rows, _benchmark_paths),
    EvalTask("captions", ("caption_images", "caption_max_new_tokens"),
             lambda backend, cfg, s: captions(backend, cfg.caption_images, cfg.caption_max_new_tokens, s),
             lambda cap: [("captions", "", "", f"{len(cap['items'])} images", rate(cap))],
             lambda cfg: [("--caption-images", p) for p in cfg.caption_images]),
)}


def requested(cfg: EvalConfig) -> list[EvalTask]:
    """The tasks ``cfg`` asks for, in registry order."""
    return [t for t in TASKS.values() if getattr(cfg, t.options[0])]


def task_flags() -> str:
    """The options that ask for a task, as a user reads them ("--val-data, --classify, ...")."""
    return ", ".join("--" + t.options[0].replace("_", "-") for t in TASKS.values())
