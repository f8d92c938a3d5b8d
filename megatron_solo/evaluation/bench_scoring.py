"""The official score of each benchmark, from per-question results (pure functions, no model).

A result is a dict with ``correct`` (bool), ``category`` (str), ``group`` (the key that ties rows
together: MMBench's ``index % 1e6``, MME's image) and, for yes/no benchmarks, ``truth`` and ``pred``
("yes", "no" or None where the answer was unread).

- MMBench (circular): a question counts only if every rotation of its options (the rows of one group)
  is answered right; reported beside the plain per-row accuracy.
- MME: per subtask, accuracy x 100 plus accuracy+ x 100 (an image counts only when both of its
  questions are right); perception and cognition are the sums over their subtasks.
- POPE: accuracy, precision, recall and F1 of "yes" as the positive class, and the share of "yes"
  answers (yes-ratio, the POPE paper's); per category (adversarial, popular, random) and overall. An
  unread answer is wrong and is not a "yes".
- the others: accuracy overall and per category.
"""

from __future__ import annotations

from collections import defaultdict

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
GROUP_MODULUS = 1_000_000  # VLMEvalKit: the rotations of MMBench question i have indexes i + k * 1e6


def _by(results: list[dict], key: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        out[r[key]].append(r)
    return dict(sorted(out.items()))


def _accuracy(results: list[dict]) -> float:
    return sum(bool(r["correct"]) for r in results) / len(results) if results else 0.0


def category_accuracy(results: list[dict]) -> dict:
    """Accuracy overall and per category (and per second-level category where rows have one)."""
    out = {"accuracy": _accuracy(results), "questions": len(results),
           "categories": {c: _accuracy(rs) for c, rs in _by(results, "category").items()}}
    if any(r.get("l2") for r in results):
        out["l2_categories"] = {c: _accuracy(rs) for c, rs in _by(
            [{**r, "l2": r.get("l2") or ""} for r in results], "l2").items()}
    return out


def circular_accuracy(results: list[dict]) -> dict:
    """MMBench: a group of rotations counts only when every one of its rows is right; per category too."""
    groups = _by(results, "group")
    whole = [{"correct": all(r["correct"] for r in rs), "category": rs[0]["category"]} for rs in groups.values()]
    return {"circular_accuracy": _accuracy(whole), "vanilla_accuracy": _accuracy(results),
            "questions": len(whole), "rows": len(results),
            "categories": {c: _accuracy(ws) for c, ws in _by(whole, "category").items()}}


def mme_scores(results: list[dict]) -> dict:
    """MME: per subtask acc and acc+ (x 100) and their sum; perception and cognition totals."""
    subtasks = {}
    for category, rows in _by(results, "category").items():
        images = _by(rows, "group")
        acc = 100.0 * _accuracy(rows)
        acc_plus = 100.0 * sum(all(r["correct"] for r in rs) for rs in images.values()) / len(images)
        subtasks[category] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus,
                              "questions": len(rows), "images": len(images)}
    unknown = sorted(set(subtasks) - set(MME_PERCEPTION) - set(MME_COGNITION))
    return {"perception": sum(s["score"] for c, s in subtasks.items() if c in MME_PERCEPTION),
            "cognition": sum(s["score"] for c, s in subtasks.items() if c in MME_COGNITION),
            "subtasks": subtasks, "other_subtasks": unknown}


def _pope(rows: list[dict]) -> dict:
    tp = sum(r["pred"] == "yes" and r["truth"] == "yes" for r in rows)
    fp = sum(r["pred"] == "yes" and r["truth"] == "no" for r in rows)
    fn = sum(r["pred"] != "yes" and r["truth"] == "yes" for r in rows)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": _accuracy(rows), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": sum(r["pred"] == "yes" for r in rows) / len(rows), "questions": len(rows),
            "unread": sum(r["pred"] is None for r in rows)}


def pope_scores(results: list[dict]) -> dict:
    """POPE: accuracy, precision, recall, F1 and yes-ratio overall and per category."""
    return {**_pope(results), "categories": {c: _pope(rs) for c, rs in _by(results, "category").items()}}
