"""SOLO's benchmarks (the paper's tables) and short-answer files: one registry entry each, one runner.

An entry says what kind of question the benchmark asks (``choice``: lettered options; ``yes_no``;
``short``: a short answer), the names the harnesses give it, how its rows tie together (MMBench's
rotations, MME's images), its official scorer (:mod:`.bench_scoring`), the rows its report shows, and how
lmms-eval's task reads an answer (:mod:`.lmms_answers`). Answers come by log-likelihood (each option, or
"Yes"/"No", scored after the prompt; the best wins) and/or by greedy generation, read by the rules of the
harness whose schema the file has (:mod:`.harnesses`; VLMEvalKit's: :mod:`.answers`), or of the one asked
for. Benchmarks whose official score needs an LLM judge (MathVista, MM-Vet) are scored by exact match of
the normalised answer under either harness, and their report rows say so.

What a file's ``answer`` names is its schema's: the option's letter in VLMEvalKit's TSVs and in
lmms-eval's datasets, but the option's index in lmms-eval's AI2D and ScienceQA; a JSONL row may give a
letter, an index or the option's text.

Prompts: multiple choice as VLMEvalKit builds it (hint, question, lettered options); yes/no and short
answers as lmms-eval's defaults (the question, then "Answer the question using a single word or phrase.").
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from megatron_solo.config.job import CHAT_TEMPLATE, TEMPLATES
from megatron_solo.evaluation import bench_scoring as official
from megatron_solo.evaluation import lmms_answers as lmms
from megatron_solo.evaluation.answers import short_answer_matches, vlmevalkit_option, vlmevalkit_yes_no
from megatron_solo.evaluation.bench_files import BenchItem, read_items
from megatron_solo.evaluation.documents import continuation_doc, prompt_doc
from megatron_solo.evaluation.errors import EvaluationError
from megatron_solo.evaluation.harnesses import JSONL, LMMS_EVAL, RULES, TITLES, default_rule
from megatron_solo.evaluation.mcq import (
    LETTERS,
    Question,
    answer_index,
    best_options,
    keyed_answer,
    prompt_text,
)
from megatron_solo.evaluation.scoring import Backend, generate_documents, score_documents
from megatron_solo.evaluation.tasks import Settings, encode_image_prompt, timed

SHORT_ANSWER_PROMPT = "\nAnswer the question using a single word or phrase."
YES_NO_SUFFIX = " Please answer yes or no."  # MME's questions end so; lmms-eval swaps it for the line above
YES_NO = ("Yes", "No")
LETTER, INDEX = "letter", "index"  # what a schema's 'answer' holds for a multiple-choice question


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its question kind, names, how rows group, its scorer, report rows and lmms-eval's reading."""

    name: str
    title: str  # as the paper's tables name it
    kind: str  # choice, yes_no or short
    scorer: Callable[[list[dict], str], dict]  # (results, the harness whose rules read them) -> scores
    headline: tuple[tuple[str, str], ...]  # (metric label, key in the scorer's result)
    aliases: tuple[str, ...] = ()  # VLMEvalKit's dataset (file) names, lmms-eval's task names
    group: Callable[[BenchItem], str] = lambda item: item.id
    judge: bool = False  # the official score needs an LLM judge: exact match here
    images_required: bool = True  # rows without an image are skipped and counted (ScienceQA-IMG)
    image_questions_only: bool = False  # rows whose data_type is video are left out and counted (SEED-Image)
    lmms_read: Callable[[str, list[str]], object] | None = None  # lmms-eval's task reading an answer
    lmms_answer: str = LETTER  # what 'answer' holds in the dataset lmms-eval loads
    lmms_until: tuple[str, ...] = ("\n\n",)  # where lmms-eval's task cuts an answer (its default: a blank line)


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
CHAT_STOP = ("ASSISTANT:",)  # lmms-eval's MMBench and SEED-Bench stop there
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("mmstar", "MMStar", "choice", official.mmstar_scores,
              (("accuracy (VLMEvalKit's Overall)", "accuracy"), ("l2-category mean (lmms-eval's average)", "l2_average")),
              lmms_read=lmms.mmstar_option),
    Benchmark("mme", "MME", "yes_no", official.mme_scores, (("perception", "perception"), ("cognition", "cognition")),
              group=_image_key, lmms_read=lmms.mme_yes_no),
    Benchmark("mmbench", "MMBench", "choice", official.circular_accuracy,
              (("circular accuracy", "circular_accuracy"), ("vanilla accuracy", "vanilla_accuracy")),
              aliases=("MMBench_DEV_EN", "MMBench_TEST_EN", "MMBench_DEV_EN_V11", "MMBench_TEST_EN_V11",
                       "mmbench_en_dev", "mmbench_en_test", "mmbench_en_dev_static"),
              group=_rotation, lmms_read=lmms.mmbench_option, lmms_until=CHAT_STOP),
    Benchmark("seed", "SEED-Bench", "choice", official.category_accuracy, (("SEED-Image accuracy", "accuracy"),),
              aliases=("SEEDBench_IMG", "seedbench"), image_questions_only=True, lmms_read=lmms.seed_option,
              lmms_until=CHAT_STOP),
    Benchmark("ai2d", "AI2D", "choice", official.category_accuracy, ACCURACY, aliases=("AI2D_TEST", "AI2D_TEST_NO_MASK"),
              lmms_read=lmms.ai2d_option, lmms_answer=INDEX),
    Benchmark("scienceqa", "ScienceQA-IMG", "choice", official.category_accuracy, ACCURACY,
              aliases=("ScienceQA_TEST", "ScienceQA_VAL", "scienceqa_img"), lmms_read=lmms.scienceqa_option,
              lmms_answer=INDEX),
    Benchmark("pope", "POPE", "yes_no", official.pope_scores,
              (("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"), ("F1", "f1"),
               ("yes-ratio (share answered yes)", "yes_ratio"),
               ("lmms-eval's pope_yes_ratio (share of truths yes)", "truth_yes_ratio")),
              lmms_read=lmms.pope_yes_no),
    Benchmark("mathvista", "MathVista", "short", official.category_accuracy, EXACT,
              aliases=("MathVista_MINI", "mathvista_testmini"), judge=True),
    Benchmark("mmvet", "MM-Vet", "short", official.category_accuracy, EXACT, aliases=("MMVet",), judge=True),
    Benchmark("vqa", "short-answer VQA", "short", official.category_accuracy, (("exact match", "accuracy"),),
              images_required=False),
)}
NAMES = {n.lower(): b.name for b in BENCHMARKS.values() for n in (b.name, b.title, *b.aliases)}


def parse_benchmark(spec: str) -> tuple[str, str]:
    """(name, path) of ``NAME=PATH`` (any of a benchmark's names, any case) or of a ``PATH`` named as a harness
    names the file (``MMBench_DEV_EN.tsv``); EvaluationError naming the known names."""
    name, sep, path = spec.partition("=")
    if sep and path and name.strip().lower() in NAMES:
        return NAMES[name.strip().lower()], path
    stem = Path(spec.rstrip("/")).name.split(".")[0].lower()
    if not sep and stem in NAMES:
        return NAMES[stem], spec
    aliases = ", ".join(a for b in BENCHMARKS.values() for a in b.aliases)
    raise EvaluationError(f"--benchmark {spec!r}: give NAME=PATH with NAME one of {', '.join(BENCHMARKS)} or a "
                          f"harness's name ({aliases}; any case), or a PATH named so (e.g. MMBench_DEV_EN.tsv)")


def _choice_question(bench: Benchmark, item: BenchItem) -> Question:
    """The item as a multiple-choice question (VLMEvalKit's prompt: the hint before the question), its answer
    read as the file's schema gives it."""
    if len(item.options) < 2:
        raise EvaluationError(f"{item.where}: a multiple-choice row needs at least two options (columns A, B, ...)")
    text = f"Hint: {item.hint}\nQuestion: {item.question}" if item.hint else item.question
    if item.schema == JSONL:
        answer = answer_index(item.answer, item.options, item.where)
    else:
        key = bench.lmms_answer if item.schema == LMMS_EVAL else LETTER
        source = f"{TITLES[item.schema]}'s {'dataset' if item.schema == LMMS_EVAL else 'TSV'} of {bench.title}"
        answer = keyed_answer(item.answer, item.options, key, item.where, source)
    return Question(item.id, item.images, text, item.options, answer)


def _truth_yes_no(item: BenchItem) -> str:
    truth = item.answer.strip().rstrip(".").lower()
    if truth not in ("yes", "no"):
        raise EvaluationError(f"{item.where}: a yes/no benchmark's answer must be Yes or No, got {item.answer!r}")
    return truth


def _prompt(bench: Benchmark, item: BenchItem, template: str, letter: bool) -> str:
    if bench.kind == "choice":
        return prompt_text(_choice_question(bench, item), template, letter)
    question = item.question.strip()
    if bench.kind == "yes_no":
        question = question.replace(YES_NO_SUFFIX, "")
    text = f"Hint: {item.hint}\n{question}" if item.hint else question
    return text + SHORT_ANSWER_PROMPT


def _read(bench: Benchmark, rule: str, item: BenchItem, text: str):
    """What one harness's rules read in a generated answer: an option index, "yes" / "no", or None."""
    if rule == LMMS_EVAL and bench.lmms_read is not None:
        for stop in bench.lmms_until:
            text = text.split(stop)[0]
        return bench.lmms_read(text, item.options)
    return vlmevalkit_option(text, item.options) if bench.kind == "choice" else vlmevalkit_yes_no(text)


def _continuations(bench: Benchmark, item: BenchItem) -> list[str]:
    return list(item.options) if bench.kind == "choice" else list(YES_NO)


def _result(bench: Benchmark, item: BenchItem, picked, text: str | None = None) -> dict:
    """One question's outcome: ``picked`` an option index (choice), yes/no (or None), or the generated text."""
    base = {"id": item.id, "category": item.category, "l2": item.l2, "group": bench.group(item)}
    if bench.kind == "choice":
        truth = _choice_question(bench, item).answer
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
              settings: Settings, rule: str) -> list[dict]:
    tok = backend.tokenizer
    lengths = [len(prompt(i, True)[0]) for i in range(len(items))]
    out = generate_documents(backend, lengths, lambda i: prompt_doc(*prompt(i, True)), max_new_tokens, tok.eos_id,
                             batch_tokens=settings.batch_tokens, max_batch=settings.max_batch,
                             desc=f"{bench.name} generate", progress=settings.progress)
    results = []
    for it, ids in zip(items, out):
        text = backend.processor.decode(ids)
        if bench.kind == "short":  # the first line is the answer, under either harness
            res = _result(bench, it, None, text.strip().split("\n")[0])
        else:
            res = _result(bench, it, _read(bench, rule, it, text))
        results.append({**res, "generated": text})
    return results


def _skipped(bench: Benchmark, item: BenchItem) -> str | None:
    """Why a question is left out of the score, or None."""
    if bench.image_questions_only and item.data_type == "video":
        return "video"
    if bench.images_required and not item.images:
        return "without_image"
    return None


def run_benchmark(backend: Backend, name: str, path: str, mode: str, template: str | None, max_new_tokens: int,
                  settings: Settings, rule: str | None = None) -> dict:
    """One benchmark file scored officially by log-likelihood and/or generation; per-question results kept.

    ``rule``: the harness whose rules read and score the answers; default: the file's schema's.
    """
    bench = BENCHMARKS[name]
    template = template or backend.template
    if template not in TEMPLATES:
        raise EvaluationError(f"template must be one of {', '.join(TEMPLATES)}, got {template!r}")
    if rule is not None and rule not in RULES:
        raise EvaluationError(f"the answer rule must be one of {', '.join(RULES)}, got {rule!r}")
    start = time.perf_counter()
    every = read_items(path, settings.max_samples)
    rule = rule or default_rule(every[0].schema)
    reasons = [_skipped(bench, it) for it in every]
    items = [it for it, why in zip(every, reasons) if why is None]
    if not items:
        raise EvaluationError(f"--benchmark {name}={path}: none of its {len(every)} questions has an image"
                              + (" (video questions are left out)" if "video" in reasons else ""))
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
                    "skipped_without_image": reasons.count("without_image"), "skipped_video": reasons.count("video"),
                    "schema": every[0].schema, "answer_rule": rule,
                    "scoring": "exact match (the official score needs an LLM judge)" if bench.judge else "official"}
    modes = ("generate",) if bench.kind == "short" else ("loglik", "generate") if mode == "both" else (mode,)
    per_item: dict[str, dict] = {it.id: {"id": it.id, "category": it.category} for it in items}
    for m in modes:
        results = (_loglik(backend, bench, items, prompt, settings) if m == "loglik"
                   else _generate(backend, bench, items, prompt, max_new_tokens, settings, rule))
        report[m] = bench.scorer(results, rule)
        for r in results:
            per_item[r["id"]].update({"answer": r.get("answer", r.get("truth")), m: r["pred"],
                                      **({"generated": r["generated"]} if "generated" in r else {})})
    report["items"] = list(per_item.values())
    return timed(report, start, sum(len(it.images) for it in items))
