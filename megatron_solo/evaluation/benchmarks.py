"""SOLO's benchmarks (the paper's tables) and short-answer files: one registry entry each, one runner.

An entry says what kind of question the benchmark asks (``choice``: lettered options; ``yes_no``;
``short``: a short answer), how its rows tie together (MMBench's rotations, MME's images), its official
scorer (:mod:`.bench_scoring`) and the rows its report shows. Answers come by log-likelihood (each option,
or "Yes"/"No", scored after the prompt; the best wins) and/or by greedy generation read by the rules of
:mod:`.answers`. Benchmarks whose official score needs an LLM judge (MathVista, MM-Vet) are scored by
exact match of the normalised answer, and their report rows say so.

Prompts: multiple choice as VLMEvalKit builds it (hint, question, lettered options); yes/no and short
answers as lmms-eval's defaults (the question, then "Answer the question using a single word or phrase.").
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from megatron_solo.config.job import CHAT_TEMPLATE, TEMPLATES
from megatron_solo.evaluation import bench_scoring as official
from megatron_solo.evaluation.answers import option_from_text, short_answer_matches, yes_no
from megatron_solo.evaluation.bench_files import BenchItem, read_items
from megatron_solo.evaluation.documents import continuation_doc, prompt_doc
from megatron_solo.evaluation.errors import EvaluationError
from megatron_solo.evaluation.mcq import LETTERS, Question, answer_index, best_options, prompt_text
from megatron_solo.evaluation.scoring import Backend, generate_documents, score_documents
from megatron_solo.evaluation.tasks import Settings, encode_image_prompt, timed

SHORT_ANSWER_PROMPT = "\nAnswer the question using a single word or phrase."
YES_NO_SUFFIX = " Please answer yes or no."  # MME's questions end so; lmms-eval swaps it for the line above
YES_NO = ("Yes", "No")


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its question kind, how rows group, its scorer and its headline report rows."""

    name: str
    title: str  # as the paper's tables name it
    kind: str  # choice, yes_no or short
    scorer: Callable[[list[dict]], dict]
    headline: tuple[tuple[str, str], ...]  # (metric label, key in the scorer's result)
    group: Callable[[BenchItem], str] = lambda item: item.id
    judge: bool = False  # the official score needs an LLM judge: exact match here
    images_required: bool = True  # rows without an image are skipped and counted (ScienceQA-IMG)


def _rotation(item: BenchItem) -> str:
    try:
        return str(int(float(item.id)) % official.GROUP_MODULUS)
    except ValueError:
        raise EvaluationError(f"{item.where}: MMBench's 'index' must be a number, got {item.id!r}") from None


def _image_key(item: BenchItem) -> str:
    digest = hashlib.sha1()
    for img in item.images:
        digest.update(img if isinstance(img, bytes) else str(img).encode())
    return f"{item.category}/{digest.hexdigest()}"


ACCURACY = (("accuracy", "accuracy"),)
EXACT = (("exact match (official: LLM judge)", "accuracy"),)
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("mmstar", "MMStar", "choice", official.category_accuracy, ACCURACY),
    Benchmark("mme", "MME", "yes_no", official.mme_scores, (("perception", "perception"), ("cognition", "cognition")),
              group=_image_key),
    Benchmark("mmbench", "MMBench", "choice", official.circular_accuracy,
              (("circular accuracy", "circular_accuracy"), ("vanilla accuracy", "vanilla_accuracy")),
              group=_rotation),
    Benchmark("seed", "SEED-Bench", "choice", official.category_accuracy, ACCURACY),
    Benchmark("ai2d", "AI2D", "choice", official.category_accuracy, ACCURACY),
    Benchmark("scienceqa", "ScienceQA-IMG", "choice", official.category_accuracy, ACCURACY),
    Benchmark("pope", "POPE", "yes_no", official.pope_scores,
              (("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"), ("F1", "f1"),
               ("yes-ratio", "yes_ratio"))),
    Benchmark("mathvista", "MathVista", "short", official.category_accuracy, EXACT, judge=True),
    Benchmark("mmvet", "MM-Vet", "short", official.category_accuracy, EXACT, judge=True),
    Benchmark("vqa", "short-answer VQA", "short", official.category_accuracy, (("exact match", "accuracy"),),
              images_required=False),
)}


def parse_benchmark(spec: str) -> tuple[str, str]:
    """(name, path) of ``NAME=PATH``; EvaluationError naming the known benchmarks."""
    name, sep, path = spec.partition("=")
    if not sep or not path or name not in BENCHMARKS:
        raise EvaluationError(f"--benchmark {spec!r}: give NAME=PATH with NAME one of {', '.join(BENCHMARKS)}")
    return name, path


def _choice_question(item: BenchItem) -> Question:
    """The item as a multiple-choice question (VLMEvalKit's prompt: the hint before the question)."""
    if len(item.options) < 2:
        raise EvaluationError(f"{item.where}: a multiple-choice row needs at least two options (columns A, B, ...)")
    text = f"Hint: {item.hint}\nQuestion: {item.question}" if item.hint else item.question
    return Question(item.id, item.images, text, item.options, answer_index(item.answer, item.options, item.where))


def _truth_yes_no(item: BenchItem) -> str:
    truth = item.answer.strip().rstrip(".").lower()
    if truth not in ("yes", "no"):
        raise EvaluationError(f"{item.where}: a yes/no benchmark's answer must be Yes or No, got {item.answer!r}")
    return truth


def _prompt(bench: Benchmark, item: BenchItem, template: str, letter: bool) -> str:
    if bench.kind == "choice":
        return prompt_text(_choice_question(item), template, letter)
    question = item.question.strip()
    if bench.kind == "yes_no":
        question = question.replace(YES_NO_SUFFIX, "")
    text = f"Hint: {item.hint}\n{question}" if item.hint else question
    return text + SHORT_ANSWER_PROMPT


def _continuations(bench: Benchmark, item: BenchItem) -> list[str]:
    return list(item.options) if bench.kind == "choice" else list(YES_NO)


def _result(bench: Benchmark, item: BenchItem, picked, text: str | None = None) -> dict:
    """One question's outcome: ``picked`` an option index (choice), yes/no (or None), or the generated text."""
    base = {"id": item.id, "category": item.category, "l2": item.l2, "group": bench.group(item)}
    if bench.kind == "choice":
        truth = _choice_question(item).answer
        return {**base, "correct": picked == truth, "answer": LETTERS[truth],
                "pred": None if picked is None else LETTERS[picked]}
    if bench.kind == "yes_no":
        truth = _truth_yes_no(item)
        return {**base, "correct": picked == truth, "truth": truth, "pred": picked}
    return {**base, "correct": short_answer_matches(text or "", item.answers), "answer": item.answer,
            "pred": (text or "").strip()}


def _loglik(backend: Backend, bench: Benchmark, items: list[BenchItem], prompt, settings: Settings) -> list[dict]:
    tok = backend.tokenizer
    conts = [[tok.encode(c) + [tok.eos_id] for c in _continuations(bench, it)] for it in items]
    pairs = [(i, k) for i in range(len(items)) for k in range(len(conts[i]))]
    lengths = [len(prompt(i, False)[0]) + len(conts[i][k]) for i, k in pairs]

    def load(j: int):
        i, k = pairs[j]
        ids, patches = prompt(i, False)
        return continuation_doc(ids, conts[i][k], patches)

    scores = score_documents(backend, lengths, load, batch_tokens=settings.batch_tokens, max_batch=settings.max_batch,
                             sort=False, desc=f"{bench.name} loglik", progress=settings.progress)
    chosen = best_options(pairs, [s for s, _ in scores], len(items))
    if bench.kind == "yes_no":
        chosen = [None if k is None else YES_NO[k].lower() for k in chosen]
    return [_result(bench, it, k) for it, k in zip(items, chosen)]


def _generate(backend: Backend, bench: Benchmark, items: list[BenchItem], prompt, max_new_tokens: int,
              settings: Settings) -> list[dict]:
    tok = backend.tokenizer
    lengths = [len(prompt(i, True)[0]) for i in range(len(items))]
    out = generate_documents(backend, lengths, lambda i: prompt_doc(*prompt(i, True)), max_new_tokens, tok.eos_id,
                             batch_tokens=settings.batch_tokens, max_batch=settings.max_batch,
                             desc=f"{bench.name} generate", progress=settings.progress)
    results = []
    for it, ids in zip(items, out):
        text = backend.processor.decode(ids)
        first = text.strip().split("\n")[0]
        if bench.kind == "choice":
            res = _result(bench, it, option_from_text(text, it.options))
        elif bench.kind == "yes_no":
            res = _result(bench, it, yes_no(first))
        else:
            res = _result(bench, it, None, first)
        results.append({**res, "generated": text})
    return results


def run_benchmark(backend: Backend, name: str, path: str, mode: str, template: str | None, max_new_tokens: int,
                  settings: Settings) -> dict:
    """One benchmark file scored officially by log-likelihood and/or generation; per-question results kept."""
    bench = BENCHMARKS[name]
    template = template or backend.template
    if template not in TEMPLATES:
        raise EvaluationError(f"template must be one of {', '.join(TEMPLATES)}, got {template!r}")
    start = time.perf_counter()
    every = read_items(path, settings.max_samples)
    items = [it for it in every if it.images or not bench.images_required]
    if not items:
        raise EvaluationError(f"--benchmark {name}={path}: none of its {len(every)} questions has an image")
    for it in items:  # every row's answer is checked before any model time is spent
        _result(bench, it, None, "")
    chat = template == CHAT_TEMPLATE
    cache: dict[tuple[int, bool], tuple] = {}

    def prompt(i: int, letter: bool):
        if (i, letter) not in cache:  # one question's patches at a time: images can be large
            cache.clear()
            it = items[i]
            cache[i, letter] = encode_image_prompt(backend.processor, _prompt(bench, it, template, letter),
                                                   it.images, chat, f"{it.where}: question {it.id}")
        return cache[i, letter]

    report: dict = {"benchmark": bench.title, "path": str(path), "template": template, "questions": len(items),
                    "skipped_without_image": len(every) - len(items),
                    "scoring": "exact match (the official score needs an LLM judge)" if bench.judge else "official"}
    modes = ("generate",) if bench.kind == "short" else ("loglik", "generate") if mode == "both" else (mode,)
    per_item: dict[str, dict] = {it.id: {"id": it.id} for it in items}
    for m in modes:
        results = (_loglik(backend, bench, items, prompt, settings) if m == "loglik"
                   else _generate(backend, bench, items, prompt, max_new_tokens, settings))
        report[m] = bench.scorer(results)
        for r in results:
            per_item[r["id"]].update({"answer": r.get("answer", r.get("truth")), m: r["pred"],
                                      **({"generated": r["generated"]} if "generated" in r else {})})
    report["items"] = list(per_item.values())
    return timed(report, start, sum(len(it.images) for it in items))
