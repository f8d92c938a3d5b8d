"""Multiple-choice questions about images (the form of MMStar, SEED-Bench, ScienceQA-IMG).

Input: JSONL rows ``{"image": path | [paths] | null, "question": str, "options": [str] | {"A": str, ...},
"answer": "B" | 1 | "the option's text"}``; image paths are relative to the file's folder.

Two ways to answer:
- ``loglik``: after the prompt (question, lettered options, then "Answer:" / the [INST] block), each
  option's text and the closing ``</s>`` are scored by their summed log-likelihood; the best wins.
- ``generate``: the prompt asks for the letter; the answer is the first standalone capital letter of the
  greedy continuation that names an option.
Templates: ``plain`` ``<s> [img] question ...`` and ``chat`` ``[img] <s>[INST] question ... [/INST]`` (SOLO's
instruction format), as built by :class:`megatron_solo.hf.processor.SoloProcessor`.
"""

from __future__ import annotations

import json
import re
import string
import time
from dataclasses import dataclass
from pathlib import Path

from megatron_solo.config.choices import choices
from megatron_solo.config.evaluation import EvalConfig
from megatron_solo.config.job import CHAT_TEMPLATE, TEMPLATES
from megatron_solo.evaluation.documents import continuation_doc, prompt_doc
from megatron_solo.evaluation.errors import EvaluationError
from megatron_solo.evaluation.scoring import Backend, generate_documents, score_documents
from megatron_solo.evaluation.tasks import Settings, encode_image_prompt, timed

LETTERS = string.ascii_uppercase
MODES = choices(EvalConfig, "mcq_mode")
LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."


@dataclass
class Question:
    """One multiple-choice item."""

    id: str
    images: list[str]
    question: str
    options: list[str]
    answer: int


def answer_index(answer, options: list[str], where: str) -> int:
    """The option an ``answer`` names: a letter, an index or the option's text."""
    if isinstance(answer, bool):
        raise EvaluationError(f"{where}: answer {answer!r} names no option")
    if isinstance(answer, int):
        index = answer
    elif isinstance(answer, str):
        text = answer.strip()
        letter = text.strip("().: ")
        if len(letter) == 1 and letter.upper() in LETTERS[:len(options)]:
            index = LETTERS.index(letter.upper())
            if text in options and options.index(text) != index:
                raise EvaluationError(f"{where}: answer {answer!r} is both the letter of option {index + 1} and the "
                                      f"text of option {options.index(text) + 1}; give the letter or the index")
        elif text in options:
            index = options.index(text)
        elif text.isdigit():
            index = int(text)
        else:
            raise EvaluationError(f"{where}: answer {answer!r} is neither a letter A-{LETTERS[len(options) - 1]}, "
                                  "an option index nor an option's text")
    else:
        raise EvaluationError(f"{where}: answer {answer!r} must be a letter, an index or an option's text")
    if not 0 <= index < len(options):
        raise EvaluationError(f"{where}: answer {answer!r} is outside the {len(options)} options")
    return index


def keyed_answer(answer: str, options: list[str], key: str, where: str, source: str) -> int:
    """The option a benchmark schema's ``answer`` names: its capital letter (``key`` "letter") or its 0-based
    index (``key`` "index"), whatever the options' own texts are; ``source`` names the schema in errors."""
    text = str(answer).strip()
    if key == "letter":
        index = LETTERS.index(text) if len(text) == 1 and text in LETTERS else -1
        form = f"an option letter A-{LETTERS[len(options) - 1]}"
    else:
        index = int(text) if text.isdigit() else -1
        form = f"an option index 0-{len(options) - 1}"
    if not 0 <= index < len(options):
        raise EvaluationError(f"{where}: answer {answer!r} is not {form}, as {source} gives it")
    return index


def _options(raw, where: str) -> list[str]:
    if isinstance(raw, dict):
        keys = sorted(raw, key=str)
        if [str(k).upper() for k in keys] != list(LETTERS[:len(keys)]):
            raise EvaluationError(f"{where}: option keys {keys} are not the letters A, B, ...")
        raw = [raw[k] for k in keys]
    if not isinstance(raw, list) or not 2 <= len(raw) <= len(LETTERS) or not all(isinstance(o, str) for o in raw):
        raise EvaluationError(f"{where}: 'options' must be a list (or letter-keyed object) of 2 to 26 strings")
    options = [o.strip() for o in raw]
    if "" in options:
        raise EvaluationError(f"{where}: option {LETTERS[options.index('')]} is empty")
    repeated = sorted({o for o in options if options.count(o) > 1})
    if repeated:
        raise EvaluationError(f"{where}: options repeat {repeated[0]!r}; each option must differ")
    return options


def load_questions(path: str | Path, max_items: int | None = None) -> list[Question]:
    """The questions of a JSONL file (image paths resolved against its folder)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"--mcq {path}: no such file")
    out: list[Question] = []
    seen: dict[str, int] = {}  # question id -> its line
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise EvaluationError(f"{where}: not UTF-8 text ({err.reason} at byte {err.start})") from None
            if not line.strip():
                continue
            if max_items is not None and len(out) >= max_items:
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise EvaluationError(f"{where}: not valid JSON ({err})") from err
            if not isinstance(row, dict) or not isinstance(row.get("question"), str) or "answer" not in row:
                raise EvaluationError(f"{where}: needs 'question' (text), 'options' and 'answer'")
            options = _options(row.get("options"), where)
            image = row.get("image")
            images = [] if image is None else [image] if isinstance(image, str) else image
            if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
                raise EvaluationError(f"{where}: 'image' must be a path, a list of paths or null")
            resolved = [str(p if Path(p).is_absolute() else path.parent / p) for p in images]
            qid = str(row.get("id", lineno))
            if qid in seen:
                raise EvaluationError(f"{where}: question id {qid!r} repeats the one on line {seen[qid]}")
            seen[qid] = lineno
            out.append(Question(qid, resolved, row["question"].strip(), options,
                                answer_index(row["answer"], options, where)))
    if not out:
        raise EvaluationError(f"--mcq {path}: no questions")
    return out


def prompt_text(q: Question, template: str, letter: bool) -> str:
    """The prompt of a question (the template's own markers are added by the processor)."""
    lines = [q.question, *(f"{LETTERS[k]}. {o}" for k, o in enumerate(q.options))]
    if letter:
        lines.append(LETTER_INSTRUCTION)
    text = "\n".join(lines)
    return text if template == CHAT_TEMPLATE else text + "\nAnswer:"


def parse_letter(text: str, num_options: int) -> int | None:
    """Index of the first standalone capital letter that names one of ``num_options`` options, or None."""
    for match in re.finditer(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])", text):
        k = LETTERS.index(match.group(1))
        if k < num_options:
            return k
    return None


def multiple_choice(backend: Backend, path: str, mode: str, template: str | None, max_new_tokens: int,
                    settings: Settings) -> dict:
    """Accuracy by option log-likelihood and/or by greedy generation with letter matching."""
    if mode not in MODES:
        raise EvaluationError(f"--mcq-mode must be one of {', '.join(MODES)}, got {mode!r}")
    template = template or backend.template
    if template not in TEMPLATES:
        raise EvaluationError(f"template must be one of {', '.join(TEMPLATES)}, got {template!r}")
    start = time.perf_counter()
    questions = load_questions(path, settings.max_samples)
    tok, chat = backend.tokenizer, template == CHAT_TEMPLATE
    encoded: dict[tuple[int, bool], tuple] = {}

    def prompt(i: int, letter: bool):
        if (i, letter) not in encoded:  # patches of one question at a time: images can be large
            encoded.clear()
            q = questions[i]
            encoded[i, letter] = encode_image_prompt(backend.processor, prompt_text(q, template, letter), q.images,
                                                     chat, f"{path}: question {q.id}")
        return encoded[i, letter]

    items = [{"id": q.id, "answer": LETTERS[q.answer]} for q in questions]
    result: dict = {"path": str(path), "template": template, "questions": len(questions)}
    batching = dict(batch_tokens=settings.batch_tokens, max_batch=settings.max_batch, progress=settings.progress)
    if mode in ("loglik", "both"):
        pairs = [(i, k) for i, q in enumerate(questions) for k in range(len(q.options))]
        option_ids = [[tok.encode(o) + [tok.eos_id] for o in q.options] for q in questions]
        lengths = [len(prompt(i, False)[0]) + len(option_ids[i][k]) for i, k in pairs]
        scores = score_documents(backend, lengths,
                                 lambda j: continuation_doc(*_with(prompt(pairs[j][0], False),
                                                                   option_ids[pairs[j][0]][pairs[j][1]])),
                                 sort=False, desc="mcq loglik", **batching)
        chosen = best_options(pairs, [s for s, _ in scores], len(questions))
        for item, k in zip(items, chosen):
            item["loglik"] = None if k is None else LETTERS[k]
        result["loglik"] = {"accuracy": _accuracy(chosen, questions), "ties": sum(k is None for k in chosen)}
    if mode in ("generate", "both"):
        lengths = [len(prompt(i, True)[0]) for i in range(len(questions))]
        out = generate_documents(backend, lengths, lambda i: prompt_doc(*prompt(i, True)), max_new_tokens,
                                 tok.eos_id, desc="mcq generate", **batching)
        chosen = []
        for i, (q, item) in enumerate(zip(questions, items)):
            text = backend.processor.decode(out[i])
            k = parse_letter(text, len(q.options))
            chosen.append(k)
            item.update(generated=text, generate=None if k is None else LETTERS[k])
        result["generate"] = {"accuracy": _accuracy(chosen, questions),
                              "unparsed": sum(k is None for k in chosen)}
    result["items"] = items
    return timed(result, start, sum(len(q.images) for q in questions))


def best_options(pairs: list[tuple[int, int]], scores: list[float], count: int) -> list[int | None]:
    """Per question, the option of highest score; None where the best score is tied (never scored as right)."""
    best: dict[int, tuple[float, int | None]] = {}
    for (i, k), score in zip(pairs, scores):
        if i not in best or score > best[i][0]:
            best[i] = (score, k)
        elif score == best[i][0]:
            best[i] = (score, None)
    return [best[i][1] for i in range(count)]


def _with(prompt: tuple, continuation: list[int]) -> tuple:
    ids, patches = prompt
    return ids, continuation, patches


def _accuracy(chosen: list[int | None], questions: list[Question]) -> float:
    return sum(c == q.answer for c, q in zip(chosen, questions)) / len(questions)
