"""The official score of each benchmark, from per-question results (pure functions, no model).

A result is a dict with ``id``, ``correct`` (bool), ``category`` and ``l2`` (str), ``group`` (the key that
ties rows together: MMBench's ``index % 1e6``, MME's image) and, for yes/no benchmarks, ``truth`` and
``pred`` ("yes", "no" or None where the answer was read as neither). Each scorer takes the harness whose
rules the answers were read by (:mod:`.harnesses`) and scores as that harness does:

- MMBench (circular): a group of rotations counts only when every one of its rows is right; the groups
  are those whose first row (index below 1e6) is there, as both harnesses take them; accuracy overall,
  per category and per l2-category over groups; the plain per-row accuracy beside it.
- MME: per subtask, accuracy x 100 plus accuracy+ x 100 (an image counts only when both of its
  questions are right); perception and cognition are the sums over their subtasks.
- POPE: accuracy, precision, recall and F1 of "yes" as the positive class, overall and per split; a
  question whose ``category`` lists several splits ("adversarial,popular") counts once in each of them,
  overall too (VLMEvalKit's ``POPE_rating``). A false negative is a "yes" truth not answered "yes"
  (VLMEvalKit) or answered "no" (lmms-eval, whose unread answers are no negative). Beside them, the share
  answered "yes" (the POPE paper's yes-ratio) and the share whose truth is "yes" (what lmms-eval calls
  ``pope_yes_ratio``).
- MMStar: accuracy (VLMEvalKit's Overall) and the mean of the l2 categories' accuracies (lmms-eval's
  ``average``); a category's figure is its accuracy (VLMEvalKit) or the mean of its l2 categories'
  (lmms-eval).
- the others: accuracy overall and per category (and per l2-category where rows have one).
"""

from __future__ import annotations

from collections import defaultdict

from megatron_solo.evaluation.harnesses import LMMS_EVAL

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
GROUP_MODULUS = 1_000_000  # VLMEvalKit: the rotations of MMBench question i have indexes i + k * 1e6
SPLIT_SEPARATOR = ","  # VLMEvalKit's POPE.tsv: the splits a question is in, in one cell


def _by(results: list[dict], key: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        out[r.get(key) or ""].append(r)
    return dict(sorted(out.items()))


def _accuracy(results: list[dict]) -> float:
    return sum(bool(r["correct"]) for r in results) / len(results) if results else 0.0


def category_accuracy(results: list[dict], rule: str) -> dict:
    """Accuracy overall and per category (and per second-level category where rows have one)."""
    out = {"accuracy": _accuracy(results), "questions": len(results),
           "categories": {c: _accuracy(rs) for c, rs in _by(results, "category").items()}}
    if any(r.get("l2") for r in results):
        out["l2_categories"] = {c: _accuracy(rs) for c, rs in _by(results, "l2").items()}
    return out


def _is_first_rotation(result: dict) -> bool:
    try:
        return float(result["id"]) < GROUP_MODULUS
    except ValueError:
        return False


def circular_accuracy(results: list[dict], rule: str) -> dict:
    """MMBench: a group of rotations counts only when every one of its rows is right; per category and l2 too."""
    groups = _by(results, "group")
    first = {r["group"]: r for r in results if _is_first_rotation(r)}
    whole = [{"correct": all(r["correct"] for r in groups[g]), "category": f["category"], "l2": f.get("l2", "")}
             for g, f in sorted(first.items())]
    out = {"circular_accuracy": _accuracy(whole), "vanilla_accuracy": _accuracy(results),
           "groups": len(whole), "rows": len(results),
           "categories": {c: _accuracy(ws) for c, ws in _by(whole, "category").items()}}
    if any(w["l2"] for w in whole):
        out["l2_categories"] = {c: _accuracy(ws) for c, ws in _by(whole, "l2").items()}
    return out


def mme_scores(results: list[dict], rule: str) -> dict:
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


def _pope(rows: list[dict], rule: str) -> dict:
    tp = sum(r["pred"] == "yes" and r["truth"] == "yes" for r in rows)
    fp = sum(r["pred"] == "yes" and r["truth"] == "no" for r in rows)
    missed = "no" if rule == LMMS_EVAL else None  # lmms-eval counts only a "no" as a false negative
    fn = sum(r["truth"] == "yes" and r["pred"] != "yes" and (missed is None or r["pred"] == missed) for r in rows)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": _accuracy(rows), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": sum(r["pred"] == "yes" for r in rows) / len(rows),
            "truth_yes_ratio": sum(r["truth"] == "yes" for r in rows) / len(rows), "questions": len(rows),
            "unread": sum(r["pred"] is None for r in rows)}


def pope_scores(results: list[dict], rule: str) -> dict:
    """POPE: accuracy, precision, recall, F1 and the yes-ratios overall and per split (a row once per its split)."""
    rows = [{**r, "category": split.strip()} for r in results
            for split in (r.get("category") or "").split(SPLIT_SEPARATOR)]
    return {**_pope(rows, rule), "categories": {c: _pope(rs, rule) for c, rs in _by(rows, "category").items()}}


def mmstar_scores(results: list[dict], rule: str) -> dict:
    """MMStar: accuracy and the mean over l2 categories; categories as the harness computes them."""
    def l2_mean(rows: list[dict]) -> float:
        means = [_accuracy(rs) for rs in _by(rows, "l2").values()]
        return sum(means) / len(means) if means else 0.0

    share = l2_mean if rule == LMMS_EVAL else _accuracy
    return {"accuracy": _accuracy(results), "l2_average": l2_mean(results), "questions": len(results),
            "categories": {c: share(rs) for c, rs in _by(results, "category").items()},
            "l2_categories": {c: _accuracy(rs) for c, rs in _by(results, "l2").items()}}
