"""Generated answers read by each harness's rules, on replies worked through those rules by hand.

VLMEvalKit (exact matching, no judge): ``can_infer_option`` (punctuation to spaces; one option letter
among the words and among the last four of them, else "answer is X"), then ``can_infer_text`` (exactly
one option's text inside an answer at most twice the options' length); ``YOrN_Extraction`` after
``process_punctuation``. lmms-eval: each task's ``process_results`` (MME's ``parse_pred_ans``, POPE's
exact "yes"/"no", SEED's first character, AI2D's ``^\\s*([A-Z])\\.`` filter then exact match ignoring case
and punctuation, ScienceQA's "X" or "X.", MMStar's ``extract_mcq_answer``, MMBench's static matching).
"""

from __future__ import annotations

import pytest

from megatron_solo.evaluation import lmms_answers as lmms
from megatron_solo.evaluation.answers import vlmevalkit_option, vlmevalkit_yes_no
from megatron_solo.evaluation.benchmarks import run_benchmark
from megatron_solo.evaluation.report import format_table
from megatron_solo.evaluation.tasks import Settings
from tests.harness import eval_benchmarks as files
from tests.harness.bench_schemas import ScriptedModel, answering

ANIMALS = ["an astronaut", "a coffee cup", "a cat", "a rocket"]


@pytest.mark.parametrize("reply, options, expected", [
    ("C", ANIMALS, 2), ("(B) a coffee cup", ANIMALS, 1),
    ("B is not it; it is a cat", ANIMALS, 2),  # the letter is not among the last four words: the text decides
    ("A or C", ANIMALS, None), ("The answer is a cat.", ANIMALS, 0),  # "answer is a" reads as A
    ("Z", ANIMALS, None), ("Sorry, I can't help with images of people yet.", ANIMALS, None),
    ("It is dark red.", ["red", "dark red", "blue"], None),  # two options' texts
    ("a cat " * 20, ANIMALS, None),  # longer than twice the options: not read by its text
])
def test_vlmevalkit_option(reply, options, expected):
    assert vlmevalkit_option(reply, options) == expected


@pytest.mark.parametrize("reply, expected", [
    ("Yes", "yes"), ("No.", "no"), ("Sure, yes.", "yes"), ("Not really", None), ("yes and no", None),
    ("Yesterday", None), ("**Yes**", None), ("Yes,it is", "yes"), ("Answer:yes", None)])
def test_vlmevalkit_yes_no(reply, expected):
    assert vlmevalkit_yes_no(reply) == expected


@pytest.mark.parametrize("read, reply, expected", [
    (lmms.mme_yes_no, "Sure, yes.", None), (lmms.mme_yes_no, "Not really", "no"), (lmms.mme_yes_no, "y", "yes"),
    (lmms.mme_yes_no, "Nope", "no"), (lmms.mme_yes_no, "Yes.", "yes"), (lmms.mme_yes_no, "", None),
    (lmms.pope_yes_no, " no ", "no"), (lmms.pope_yes_no, "Yes.", None), (lmms.pope_yes_no, "Yes, a rocket.", None),
])
def test_lmms_eval_yes_no(read, reply, expected):
    assert read(reply, []) == expected


@pytest.mark.parametrize("read, reply, expected", [
    (lmms.seed_option, "B. a cat", 1), (lmms.seed_option, "The cup", None), (lmms.seed_option, "b", 1),
    (lmms.seed_option, "  C", 2), (lmms.seed_option, "E", None),
    (lmms.ai2d_option, "C.", 2), (lmms.ai2d_option, "(A) larva", None), (lmms.ai2d_option, "a", 0),
    (lmms.ai2d_option, "B)", 1), (lmms.ai2d_option, " D. flower", 3), (lmms.ai2d_option, "B tree", None),
    (lmms.scienceqa_option, "B.", 1), (lmms.scienceqa_option, "b", 1), (lmms.scienceqa_option, "a rocket", None),
    (lmms.scienceqa_option, "B) a cat", None), (lmms.scienceqa_option, "b.", None),
    (lmms.mmstar_option, "The correct answer is (A).", 0), (lmms.mmstar_option, "I think C", 2),
    (lmms.mmstar_option, "Option D: 4", 3), (lmms.mmstar_option, "", None),
    (lmms.mmbench_option, "I think it is B, not A.", 0), (lmms.mmbench_option, "B is not it; it is a cat", 1),
    (lmms.mmbench_option, "**B**", 1), (lmms.mmbench_option, "E", None),
    (lmms.mmbench_option, "It shows a rocket", 3),
])
def test_lmms_eval_options(read, reply, expected):
    assert read(reply, ANIMALS) == expected


def test_the_report_names_the_rule_each_file_was_read_by(tmp_path):
    replies = {"a cat": "Sure, yes.", "a dog": "Not really", "white": "Yes", "red?": "No", "a rocket?": "yes",
               "night": "y", "suit": "Yes, a suit.", "underwater": "Nope", "a rocket in": "Not really",
               "one cup": "Yes", "three cups": "No."}
    model = ScriptedModel(answering(replies))
    tsv = run_benchmark(model, "mme", str(files.mme_tsv(tmp_path / "MME.tsv")), "generate", None, 8,
                        Settings(progress=False))
    parquet = run_benchmark(model, "mme", str(files.mme_parquet(tmp_path / "MME.parquet")), "generate", None, 8,
                            Settings(progress=False))
    assert (tsv["answer_rule"], parquet["answer_rule"]) == ("vlmevalkit", "lmms-eval")
    lines = format_table({"model": {}, "benchmarks": {"mme": parquet}}).splitlines()
    assert any(line.startswith("MME (generate, lmms-eval rules)  perception") for line in lines)
    forced = run_benchmark(model, "mme", str(files.mme_parquet(tmp_path / "MME.parquet")), "generate", None, 8,
                           Settings(progress=False), rule="vlmevalkit")
    # VLMEvalKit: "Not really", "y" and "Nope" unread: existence 50, color 200, landmark 50, celebrity 50 + 0
    assert (forced["answer_rule"], forced["generate"]["perception"]) == ("vlmevalkit", 350.0)
