"""Rule-based reading of a generated answer, as the harnesses read one without an LLM judge.

- multiple choice: the option letter that stands alone in the answer (VLMEvalKit's ``can_infer_option``
  idea: punctuation and brackets become spaces, exactly one option letter among the words), else the one
  option whose text the answer contains (``can_infer_text``); an answer naming two options is unread;
- yes / no: the answer's words hold "yes" or "no", not both (VLMEvalKit's ``YOrN_Extraction``);
- short answers: compared after normalisation (lower case, punctuation, articles and spaces dropped,
  number words as digits), the VQA way.
"""

from __future__ import annotations

import re
import string

LETTERS = string.ascii_uppercase
_SPLIT = re.compile(r"[\s.,:;!?()\[\]{}*#\"'`/\\<>|=-]+")
_ARTICLES = {"a", "an", "the"}
_NUMBERS = {w: str(k) for k, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}


def _words(text: str) -> list[str]:
    return [w for w in _SPLIT.split(text) if w]


def option_from_text(text: str, options: list[str]) -> int | None:
    """The option a generated answer names (by its letter, else by its text), or None when unclear."""
    letters = set(LETTERS[:len(options)])
    named = {w for w in _words(text) if w in letters}
    if len(named) == 1:
        return LETTERS.index(named.pop())
    if named:
        return None  # two letters: no rule can choose
    lowered = text.lower()
    contained = [k for k, o in enumerate(options) if o.strip() and o.strip().lower() in lowered]
    if len(contained) > 1:  # "red" inside "dark red": keep only options not inside another named one
        contained = [k for k in contained
                     if not any(k != j and options[k].lower() in options[j].lower() for j in contained)]
    return contained[0] if len(contained) == 1 else None


def yes_no(text: str) -> str | None:
    """"yes" or "no" when the answer's words hold exactly one of them, else None."""
    words = {w.lower() for w in _words(text)}
    has_yes, has_no = "yes" in words, "no" in words
    if has_yes != has_no:
        return "yes" if has_yes else "no"
    return None


def normalize_short_answer(text: str) -> str:
    """A short answer as compared: lower case, no punctuation or articles, number words as digits."""
    words = [w for w in re.sub(r"[^\w\s]", " ", text.lower()).split() if w not in _ARTICLES]
    return " ".join(_NUMBERS.get(w, w) for w in words)


def short_answer_matches(text: str, answers: list[str]) -> bool:
    """Whether a generated answer equals one of the accepted ``answers`` after normalisation."""
    got = normalize_short_answer(text)
    return any(got == normalize_short_answer(a) for a in answers)
