"""A generated answer read by VLMEvalKit's rules (its exact matching, no LLM judge), and short answers.

- multiple choice (``vlmeval/utils/matching_util.py``, ``can_infer``): punctuation ``.()[],:;!*#{}`` becomes
  spaces; exactly one option letter among the words, and among the last four of them, names its option; a
  lone "Z" or a refusal names none; else "answer is X" names X; else the one option whose text the answer
  holds, when the answer is at most twice as long as the options together;
- yes / no (``vlmeval/dataset/utils/yorn.py``, ``YOrN_Extraction``): after VLMEvalKit's
  ``process_punctuation``, the answer's words hold "yes" or "no", not both;
- short answers (the judge-scored benchmarks, and any short-answer file): compared after normalisation
  (lower case, punctuation, articles and spaces dropped, number words as digits), the VQA way.

As VLMEvalKit's main branch has them (August 2026). lmms-eval's rules: :mod:`.lmms_answers`.
"""

from __future__ import annotations

import re
import string

LETTERS = string.ascii_uppercase
_OPTION_PUNCTUATION = ".()[],:;!*#{}"
_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
             "I'm sorry, but without the image provided", "Cannot determine the answer")
_VERBOSE = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
_NO_OPTION = "Z"  # VLMEvalKit's "none of the options"
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
                "!")
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")
_ARTICLES = {"a", "an", "the"}
_NUMBERS = {w: str(k) for k, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}


def _option_letter(text: str, letters: str) -> str | None:
    """``can_infer_option``: a letter, "Z" (no option), or None (the option's text decides)."""
    if "Failed to obtain answer via API" in text:
        return None
    if any(refusal in text for refusal in _REFUSALS):
        return _NO_OPTION
    words = text.translate(str.maketrans(_OPTION_PUNCTUATION, " " * len(_OPTION_PUNCTUATION))).split()
    named = [c for c in letters if c in words]
    if len(named) == 1:
        if words.index(named[0]) > len(words) - 5:  # a letter early in a long answer may be a word ("A cat ...")
            return named[0]
    elif not named and _NO_OPTION in words:
        return _NO_OPTION
    verbose = _VERBOSE.search(text)
    if verbose and verbose.group(1).upper() in letters:
        return verbose.group(1).upper()
    return None


def _option_by_text(text: str, options: list[str]) -> int | None:
    """``can_infer_text``: the one option whose text the answer holds."""
    lowered = text.lower()
    if len(lowered) > 2 * sum(len(o) for o in options):
        return None
    found = [k for k, o in enumerate(options) if o.lower() in lowered]
    return found[0] if len(found) == 1 else None


def vlmevalkit_option(text: str, options: list[str]) -> int | None:
    """The option VLMEvalKit reads in a generated answer (its letter, else its text), or None."""
    letters = LETTERS[:len(options)]
    letter = _option_letter(text, letters)
    if letter is not None:
        return letters.index(letter) if letter in letters else None
    return _option_by_text(text, options)


def _process_punctuation(text: str) -> str:
    """VLMEvalKit's ``process_punctuation`` (a mark beside a space, or any when a number holds a comma, is dropped;
    else it becomes a space; a period not touching a digit is dropped)."""
    out = text
    for mark in _PUNCTUATION:
        if mark + " " in text or " " + mark in text or _COMMA_IN_NUMBER.search(text):
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=32)  # VLMEvalKit passes re.UNICODE (32) where the count goes


def vlmevalkit_yes_no(text: str) -> str | None:
    """"yes" or "no" when the answer's words hold exactly one of them (VLMEvalKit's reading), else None."""
    words = _process_punctuation(text.lower()).split()
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
