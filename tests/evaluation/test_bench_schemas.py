"""Every benchmark from a tiny file in each harness's schema, scored as that harness scores it, worked out by hand.

A TSV is VLMEvalKit's (its answers read by VLMEvalKit's rules: ``can_infer``, ``YOrN_Extraction``; its
scoring: ``report_acc`` over circular groups, ``MME_rating``, ``POPE_rating`` over the splits a question is
in); a parquet is the Hugging Face dataset lmms-eval loads (read and scored by that task's
``process_results`` and aggregation). The scripted replies (tests/harness/bench_rows.py) sit where the
harnesses differ, so each expected number below follows from one harness's rules only.
"""

from __future__ import annotations

import pytest

from megatron_solo.evaluation.bench_files import read_items
from megatron_solo.evaluation.benchmarks import BENCHMARKS, parse_benchmark, run_benchmark
from megatron_solo.evaluation.errors import EvaluationError
from megatron_solo.evaluation.report import format_table
from megatron_solo.evaluation.tasks import Settings
from tests.harness import bench_rows as rows
from tests.harness import eval_benchmarks as files
from tests.harness.bench_schemas import ScriptedModel, answering, b64, struct, write_parquet
from tests.harness.eval_benchmarks import write_tsv
from tests.harness.tool_runs import run_here

SETTINGS = Settings(progress=False)


def _run(replies: dict, name: str, path, mode: str = "generate") -> dict:
    return run_benchmark(ScriptedModel(answering(replies)), name, str(path), mode, None, 32, SETTINGS)


# VLMEvalKit: "Sure, yes." is yes, "Not really" unread; lmms-eval (the first four characters): the other way round
MME_TSV_REPLIES = {"a cat in": "Sure, yes.", "a rocket in": "Not really", "one cup": "Yes", "three cups": "No."}
MME_PARQUET_REPLIES = {"a cat": "Sure, yes.", "a dog": "Not really", "white": "Yes", "red?": "No", "a rocket?": "yes",
                       "night": "y", "suit": "Yes, a suit.", "underwater": "Nope"}

CASES = {
    # MME: per subtask acc + acc+ (x 100); existence 1 of 2 right (50 + 0), count both (100 + 100)
    "mme-vlmevalkit": ("mme", files.mme_tsv, MME_TSV_REPLIES,
                       {("perception",): 250.0, ("subtasks", "existence", "acc_plus"): 0.0}),
    # lmms-eval: "y" is yes (wrong at night), "Nope" no: existence 50, color 200, landmark 50, celebrity 200
    "mme-lmms-eval": ("mme", files.mme_parquet, MME_PARQUET_REPLIES,
                      {("perception",): 500.0, ("subtasks", "landmark", "score"): 50.0, ("cognition",): 0.0}),
    # the question in three splits counts three times: 7 rows, tp 5, fp 1 (the person), fn 0
    "pope-vlmevalkit": ("pope", rows.pope_tsv, rows.POPE_REPLIES,
                        {("accuracy",): 6 / 7, ("precision",): 5 / 6, ("recall",): 1.0, ("f1",): 10 / 11,
                         ("yes_ratio",): 6 / 7, ("truth_yes_ratio",): 5 / 7, ("categories", "random", "f1"): 4 / 5,
                         ("categories", "adversarial", "accuracy"): 1.0, ("categories", "popular", "questions"): 2}),
    # "yes." and "Yes, a rocket." are neither yes nor no: wrong, and (lmms-eval) not a false negative
    "pope-lmms-eval": ("pope", rows.pope_parquet, rows.POPE_REPLIES,
                       {("accuracy",): 4 / 6, ("precision",): 1.0, ("recall",): 1.0, ("f1",): 1.0, ("yes_ratio",): 3 / 6,
                        ("truth_yes_ratio",): 4 / 6, ("categories", "popular", "accuracy"): 1 / 2}),
    # groups: the cat right in all four rotations, the rocket not ("B, not A." unread), the cup right by its text
    "mmbench-vlmevalkit": ("mmbench", rows.mmbench_tsv, rows.MMBENCH_REPLIES,
                           {("circular_accuracy",): 2 / 3, ("vanilla_accuracy",): 6 / 7, ("groups",): 3, ("rows",): 7,
                            ("categories", "image_topic"): 1.0, ("categories", "object_localization"): 0.0,
                            ("l2_categories", "coarse_perception"): 1.0,
                            ("l2_categories", "finegrained_perception (instance-level)"): 0.0}),
    # lmms-eval (static matching): the lone letter wins over the text, "A." is read: only the rocket's group right
    "mmbench-lmms-eval": ("mmbench", rows.mmbench_parquet, rows.MMBENCH_REPLIES,
                          {("circular_accuracy",): 1 / 3, ("vanilla_accuracy",): 5 / 7, ("groups",): 3,
                           ("categories", "image_topic"): 0.0, ("categories", "object_localization"): 1.0,
                           ("l2_categories", "finegrained_perception (instance-level)"): 1.0}),
    # 3 of 4 right; l2 means 1/2, 1, 1 -> 5/6; VLMEvalKit's categories are plain accuracies
    "mmstar-vlmevalkit": ("mmstar", rows.mmstar_tsv, rows.MMSTAR_REPLIES,
                          {("accuracy",): 3 / 4, ("l2_average",): 5 / 6, ("categories", "coarse perception"): 2 / 3,
                           ("categories", "math"): 1.0}),
    # lmms-eval's category is the mean of its l2 categories' means: (1/2 + 1) / 2
    "mmstar-lmms-eval": ("mmstar", rows.mmstar_parquet, rows.MMSTAR_REPLIES,
                         {("accuracy",): 3 / 4, ("l2_average",): 5 / 6, ("categories", "coarse perception"): 3 / 4,
                          ("categories", "math"): 1.0}),
    # VLMEvalKit reads "It is a rocket." by the option's text; "The cup" names no option
    "seed-vlmevalkit": ("seed", rows.seed_tsv, rows.SEED_REPLIES,
                        {("accuracy",): 2 / 3, ("categories", "Instance Attributes"): 0.0}),
    # lmms-eval takes the first character: only "B. a cat" is right; the video question is left out
    "seed-lmms-eval": ("seed", rows.seed_parquet, rows.SEED_REPLIES, {("accuracy",): 1 / 3, ("questions",): 3}),
    "ai2d-vlmevalkit": ("ai2d", rows.ai2d_tsv, rows.AI2D_TSV_REPLIES, {("accuracy",): 2 / 3}),
    # the answer "2" is the third option (C), not the option whose text is "2"; "(A) larva" is not "a"
    "ai2d-lmms-eval": ("ai2d", rows.ai2d_parquet, rows.AI2D_PARQUET_REPLIES, {("accuracy",): 2 / 3}),
    "scienceqa-vlmevalkit": ("scienceqa", rows.scienceqa_tsv, rows.SCIENCEQA_REPLIES, {("accuracy",): 2 / 3}),
    # "B." is read, "a rocket" (VLMEvalKit: by its text) is not; the question without an image is skipped
    "scienceqa-lmms-eval": ("scienceqa", rows.scienceqa_parquet, rows.SCIENCEQA_REPLIES, {("accuracy",): 1 / 3}),
    "mathvista-vlmevalkit": ("mathvista", rows.mathvista_tsv, rows.MATHVISTA_REPLIES, {("accuracy",): 2 / 3}),
    "mathvista-lmms-eval": ("mathvista", rows.mathvista_parquet, rows.MATHVISTA_REPLIES, {("accuracy",): 2 / 3}),
    # MM-Vet's answers list alternatives joined by <OR>
    "mmvet-vlmevalkit": ("mmvet", rows.mmvet_tsv, rows.MMVET_REPLIES, {("accuracy",): 2 / 3}),
    "mmvet-lmms-eval": ("mmvet", rows.mmvet_parquet, rows.MMVET_REPLIES, {("accuracy",): 2 / 3}),
}


def _at(result: dict, path: tuple):
    for key in path:
        result = result[key]
    return result


@pytest.mark.parametrize("case", CASES)
def test_each_benchmark_in_each_schema_scores_as_its_harness(tmp_path, case):
    name, write, replies, expected = CASES[case]
    schema = case.split("-", 1)[1]
    path = write(tmp_path / ("bench.tsv" if schema == "vlmevalkit" else "bench.parquet"))
    report = _run(replies, name, path)
    assert report["answer_rule"] == schema
    for key, value in expected.items():
        assert _at(report["generate"], key) == pytest.approx(value), key


def test_every_benchmark_has_a_case_in_each_harness_schema():
    judged = {case.split("-", 1)[0] for case in CASES}
    assert judged == set(BENCHMARKS) - {"vqa"}  # vqa: any short-answer JSONL, no harness's file


def test_pope_splits_with_restarting_question_ids_stay_apart(tmp_path):
    report = _run(rows.POPE_REPLIES, "pope", rows.pope_parquet(tmp_path / "POPE.parquet"))
    items = report["items"]
    assert len(items) == 6 and len({i["id"] for i in items}) == 6
    assert [i["category"] for i in items].count("popular") == 2
    table = format_table({"model": {}, "benchmarks": {"pope": report}})
    assert "lmms-eval's pope_yes_ratio" in table and "share answered yes" in table


def test_a_tsv_image_cell_may_name_a_later_row(tmp_path):
    path = write_tsv(tmp_path / "MMBench_DEV_EN.tsv", [
        {"index": 0, "question": "What is it?", "A": "a cat", "B": "a cup", "answer": "A", "image": "1000000"},
        {"index": 1000000, "question": "What is it?", "A": "a cup", "B": "a cat", "answer": "B",
         "image": b64("chelsea")}])
    first, second = read_items(path)
    assert first.images == second.images and len(first.images[0]) > 100
    assert read_items(path, max_items=1)[0].images == second.images  # the row it names is past the first
    write_tsv(path, [{"index": 0, "question": "What is it?", "A": "a", "B": "b", "answer": "A", "image": "7"}])
    with pytest.raises(EvaluationError, match=r"MMBench_DEV_EN.tsv:2: image '7' is neither the index of a row"):
        read_items(path)


def test_seed_video_questions_are_left_out_and_counted(tmp_path):
    report = _run(rows.SEED_REPLIES, "seed", rows.seed_parquet(tmp_path / "seed.parquet"))
    assert (report["questions"], report["skipped_video"]) == (3, 1)
    table = format_table({"model": {}, "benchmarks": {"seed": report}})
    assert "SEED-Image" in table and "3 questions, 1 video question left out" in table


def test_mmbench_table_counts_circular_groups_and_breaks_down_by_l2_category(tmp_path):
    report = _run(rows.MMBENCH_REPLIES, "mmbench", rows.mmbench_tsv(tmp_path / "MMBench_DEV_EN.tsv"))
    lines = format_table({"model": {}, "benchmarks": {"mmbench": report}}).splitlines()
    circular = next(line for line in lines if "circular accuracy" in line)
    assert "66.67" in circular and "3 circular groups (7 rows)" in circular
    assert any(line.split()[:2] == ["coarse_perception", "(l2)"] and "100.00" in line for line in lines)


def test_mmstar_table_names_both_figures(tmp_path):
    report = _run(rows.MMSTAR_REPLIES, "mmstar", rows.mmstar_parquet(tmp_path / "mmstar.parquet"))
    table = format_table({"model": {}, "benchmarks": {"mmstar": report}})
    assert "lmms-eval's average" in table and "83.33" in table and "75.00" in table


@pytest.mark.parametrize("spec, name", [
    ("MME=x.tsv", "mme"), ("mmbench_dev_en=x.tsv", "mmbench"), ("SEEDBench_IMG=x.tsv", "seed"),
    ("data/MMBench_DEV_EN.tsv", "mmbench"), ("AI2D_TEST.tsv", "ai2d"), ("ScienceQA_TEST.tsv", "scienceqa"),
    ("MMStar.tsv", "mmstar"), ("POPE.tsv", "pope"), ("MathVista_MINI.tsv", "mathvista"), ("pope=x.parquet", "pope"),
    ("mathvista_testmini=x.parquet", "mathvista"), ("seedbench=x.parquet", "seed"), ("MMVet.tsv", "mmvet")])
def test_benchmark_names_as_the_harnesses_spell_them(spec, name):
    assert parse_benchmark(spec)[0] == name


def test_an_unknown_benchmark_name_is_one_line_naming_the_choices(capfd, tmp_path):
    with pytest.raises(EvaluationError, match="MMBench_DEV_EN"):
        parse_benchmark("test-00000-of-00001.parquet")  # no NAME= and no harness's file name
    run = run_here(capfd, "evaluate.py", "--hf", tmp_path, "--benchmark", "mmmu=x.tsv")
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1
    assert "NAME one of mmstar, mme, mmbench" in run.stderr


def test_an_answer_not_in_the_schemas_form_names_file_row_and_form(tmp_path):
    ai2d = write_parquet(tmp_path / "ai2d.parquet", [{"question": "Which?", "options": ["1", "2"], "answer": "B",
                                                      "image": struct("chelsea")}])
    with pytest.raises(EvaluationError, match=r"ai2d.parquet:row_group 0:row 0: answer 'B' is not an option index "
                                              r"0-1, as lmms-eval's dataset of AI2D gives it"):
        _run({}, "ai2d", ai2d)
    tsv = write_tsv(tmp_path / "MMStar.tsv", [{"index": 0, "question": "Which?", "A": "x", "B": "y", "answer": "b",
                                              "image": b64("chelsea")}])
    with pytest.raises(EvaluationError, match=r"MMStar.tsv:2: answer 'b' is not an option letter A-B, as "
                                              r"VLMEvalKit's TSV of MMStar gives it"):
        _run({}, "mmstar", tsv)
