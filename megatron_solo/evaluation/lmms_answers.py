"""A generated answer read by lmms-eval's rules: each task's own ``process_results`` (lmms-eval 0.7, ``lmms_eval/tasks``).

Every reader takes the answer as lmms-eval's model returns it (cut at the task's ``until`` strings) and the
question's options, and gives what the task would count: an option index, "yes" / "no", or None where the
task counts the answer as neither (wrong).

- MME (``mme/utils.py``, ``parse_pred_ans``): lower case, stripped, periods dropped; "yes" / "no", a lone
  "y" / "n", else whichever of "yes", "no" the first four characters hold;
- POPE (``pope/utils.py``): the stripped, lower-cased answer is exactly "yes" or "no";
- SEED-Bench (``seedbench/utils.py``): the first character of the stripped answer, as the letter;
- AI2D (``ai2d.yaml``): a leading "X." gives X, else the whole answer, then exact match with the letter
  ignoring case and punctuation;
- ScienceQA (``scienceqa/utils.py``): the stripped answer is the letter (any case) or starts "X." (capital);
- MMStar (``mmstar/utils.py``): ``extract_mcq_answer`` (``_task_utils/mcq_extract.py``) over A-D;
- MMBench (``mmbench_evals.py``, static matching): one lone letter of A-E (unless "A" could be a word in a
  longer answer), else one letter with a bracket or stop beside it, else the one option whose text the
  answer holds, else ``extract_mcq_answer``.
"""

from __future__ import annotations

import re
import string

LETTERS = string.ascii_uppercase
_LEADING_LETTER = re.compile(r"^\s*([A-Z])\.")
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)
_MMBENCH_LETTERS = "ABCDE"
_MMBENCH_AFFIXES = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""),
                    (":", ","), (":", "."), (":", ")"), (":", ")."))
_PHRASES = ("the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
            "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
            "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select",
            "i pick", "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは")
# extract_mcq_answer's formats in its order, with their priority (a higher one wins; then the later place)
_FORMATS = (("({})", 6), ("{}.", 5), ("{}:", 4), ("{})", 3), ("{} ", 2))
_PHRASE, _START, _END, _ANYWHERE = 7, 10, 9, 0


def _index(letter: str, options: list[str]) -> int | None:
    return LETTERS.index(letter) if len(letter) == 1 and letter in LETTERS[:len(options)] else None


def mme_yes_no(text: str, options: list[str]) -> str | None:
    """MME's ``parse_pred_ans``."""
    answer = text.lower().strip().replace(".", "")
    if answer in ("yes", "no"):
        return answer
    if len(answer) == 1:
        return {"y": "yes", "n": "no"}.get(answer)
    head = answer[:4]
    return "yes" if "yes" in head else "no" if "no" in head else None


def pope_yes_no(text: str, options: list[str]) -> str | None:
    """POPE: the answer is exactly "yes" or "no" (any case, spaces around)."""
    answer = text.lower().strip()
    return answer if answer in ("yes", "no") else None


def seed_option(text: str, options: list[str]) -> int | None:
    """SEED-Bench: the first character."""
    return _index(text.strip()[:1].upper(), options)


def ai2d_option(text: str, options: list[str]) -> int | None:
    """AI2D: its leading-letter filter, then exact match with a letter ignoring case and punctuation."""
    leading = _LEADING_LETTER.match(text)
    answer = (leading.group(1) if leading else text).strip().lower().translate(_NO_PUNCTUATION)
    return _index(answer.upper(), options)


def scienceqa_option(text: str, options: list[str]) -> int | None:
    """ScienceQA: the letter alone (any case) or a capital letter and a period first."""
    answer = text.strip()
    if len(answer) == 1:
        return _index(answer.upper(), options)
    if len(answer) >= 2 and answer[0].isupper() and answer[1] == ".":
        return _index(answer[0], options)
    return None


def extract_mcq_answer(response: str, choices: str) -> str:
    """lmms-eval's ``extract_mcq_answer``: the letter of the best-ranked format it appears in, or ""."""
    if not response or not response.strip():
        return ""
    text = response.strip()
    for mark in ",.!?;:'\"":  # one mark after the other, as lmms-eval strips them
        text = text.strip(mark)
    text = f" {text} "
    found = [(priority, text.rfind(form.format(c)), c) for form, priority in _FORMATS for c in choices
             if form.format(c) in text]
    lowered = text.lower()
    for phrase in _PHRASES:
        at = lowered.find(phrase)
        if at != -1:
            found += [(_PHRASE, text.find(c, at + len(phrase)), c) for c in choices
                      if text.find(c, at + len(phrase)) != -1]
    stripped = text.strip()
    found += [(_START, 0, c) for c in choices
              if stripped.startswith(c) and (len(stripped) == 1 or not stripped[1].isalpha())]
    found += [(_END, len(text) - 1, c) for c in choices
              if stripped.endswith(c) and (len(stripped) == 1 or not stripped[-2].isalpha())]
    if not found:
        found = [(_ANYWHERE, text.rfind(c), c) for c in choices if c in text]
    return max(found, key=lambda f: (f[0], f[1]))[2] if found else ""


def mmstar_option(text: str, options: list[str]) -> int | None:
    """MMStar: ``extract_mcq_answer`` over A-D."""
    return _index(extract_mcq_answer(text, "ABCD"), options)


def _mmbench_letter(text: str) -> str | None:
    """MMBench's ``can_infer_option`` (over A-E, whatever the options)."""
    words = [w.strip() for w in text.split()]
    named = [c for c in _MMBENCH_LETTERS if c in words]
    if len(named) == 1 and not ("A" in words and len(words) > 3):  # "A" may be the article of a longer answer
        return named[0]
    for prefix, suffix in _MMBENCH_AFFIXES:
        named = [c for c in _MMBENCH_LETTERS if prefix + c + suffix in words]
        if len(named) == 1:
            return named[0]
    return None


def mmbench_option(text: str, options: list[str]) -> int | None:
    """MMBench (static): a letter, else the one option's text, else ``extract_mcq_answer``; an E is wrong."""
    answer = text.strip()
    letter = _mmbench_letter(answer)
    if letter is not None:
        return _index(letter, options)
    lowered = answer.lower()
    found = [k for k, o in enumerate(options[:4]) if o.lower() in lowered]
    if len(found) == 1:
        return found[0]
    return _index(extract_mcq_answer(answer, LETTERS[:min(len(options), 4)]), options)
