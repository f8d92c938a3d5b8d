"""Benchmark files in each harness's schema read and scored officially, with scores worked out by hand.

The model is a scripted stand-in (it reads the decoded prompt and answers by a rule), so what is tested is
everything around a model: reading each schema, the prompts, answer extraction and the official scoring.
The real models (Megatron at TP1/TP2/PP2 and the HF export) run the same benchmarks in test_backends.py.
"""

from __future__ import annotations

import pytest

from megatron_solo.evaluation import bench_scoring as official
from megatron_solo.evaluation.answers import normalize_short_answer
from megatron_solo.evaluation.bench_files import read_items
from megatron_solo.evaluation.benchmarks import run_benchmark
from megatron_solo.evaluation.errors import EvaluationError
from megatron_solo.evaluation.report import format_table
from megatron_solo.evaluation.tasks import Settings
from tests.harness import eval_benchmarks as files
from tests.harness.bench_schemas import ScriptedModel

SETTINGS = Settings(progress=False)


def _run(rule, name, path, mode="generate"):
    return run_benchmark(ScriptedModel(rule), name, str(path), mode, None, 16, SETTINGS)


def test_mmbench_question_right_in_three_of_four_rotations_scores_zero(tmp_path):
    def rule(prompt):
        if "Hint" not in prompt:
            return "D"  # question 1: right
        return "A" if "A. a rocket" in prompt else "It is a cat."  # wrong in the last rotation only

    result = _run(rule, "mmbench", files.mmbench_tsv(tmp_path / "MMBench_DEV_EN.tsv"))["generate"]
    assert result["rows"] == 5 and result["groups"] == 2
    assert result["vanilla_accuracy"] == pytest.approx(4 / 5)
    assert result["circular_accuracy"] == pytest.approx(1 / 2)
    assert result["categories"] == {"image_topic": 1.0, "object_localization": 0.0}


def test_mme_acc_plus_counts_an_image_only_when_both_questions_are_right(tmp_path):
    answers = {"cat": "Yes", "rocket": "Yes", "one cup": "Yes.", "three cups": "No, there is one."}

    def rule(prompt):
        return next(a for key, a in answers.items() if key in prompt)

    path = files.mme_tsv(tmp_path / "MME.tsv")
    for mode in ("generate", "loglik"):
        result = _run(rule, "mme", path, mode)[mode]
        existence, count = result["subtasks"]["existence"], result["subtasks"]["count"]
        assert (existence["acc"], existence["acc_plus"], existence["images"]) == (50.0, 0.0, 1)  # 1 of 2 right
        assert (count["acc"], count["acc_plus"]) == (100.0, 100.0)
        assert result["perception"] == pytest.approx(50.0 + 200.0) and result["cognition"] == 0.0


@pytest.mark.parametrize("layout", ["parquet", "datasets folder"])
def test_always_yes_model_on_pope(tmp_path, layout):
    path = files.pope_parquet(tmp_path / "pope.parquet") if layout == "parquet" else files.pope_folder(tmp_path / "d")
    result = _run(lambda prompt: "Yes", "pope", path)
    g = result["generate"]
    assert result["questions"] == 5 and g["yes_ratio"] == 1.0
    p = 3 / 5  # three of the five truths are yes
    assert (g["accuracy"], g["precision"], g["recall"]) == (pytest.approx(p), pytest.approx(p), 1.0)
    assert g["f1"] == pytest.approx(2 * p * 1.0 / (p + 1.0))  # 0.75
    assert g["categories"]["adversarial"]["f1"] == pytest.approx(2 / 3)


def test_short_answers_match_after_normalisation(tmp_path):
    def rule(prompt):
        return "A cat." if "animal" in prompt else "One" if "cups" in prompt else "Blue sky\nmore"

    result = _run(rule, "vqa", files.vqa_jsonl(tmp_path / "vqa.jsonl"))
    assert result["generate"]["accuracy"] == pytest.approx(2 / 3)
    assert result["generate"]["categories"] == {"animals": 1.0, "counting": 1.0, "text only": 0.0}
    assert [i["generate"] for i in result["items"]] == ["A cat.", "One", "Blue sky"]  # the first line is the answer
    assert result["images"] == 2


def test_readers_take_each_schema(tmp_path):
    mme = read_items(files.mme_tsv(tmp_path / "MME.tsv"))
    assert mme[1].images == mme[0].images and mme[1].images != mme[2].images  # "0": the image of row index 0
    mm = read_items(files.mmbench_tsv(tmp_path / "mmb.tsv"))
    assert (mm[1].options[0], mm[1].answer, mm[1].hint, mm[1].l2) == ("a coffee cup", "B", "A photo.", "perception")
    assert mm[4].hint == ""
    pope = read_items(files.pope_parquet(tmp_path / "p.parquet"))
    folder = read_items(files.pope_folder(tmp_path / "folder"))
    assert [(i.id, i.images, i.answer) for i in pope] == [(i.id, i.images, i.answer) for i in folder]
    rows = tmp_path / "others.jsonl"
    rows.write_text(
        # lmms-eval's MMStar (options inside the question), AI2D (a list, an index), SEED (choice_a..)
        '{"index": 0, "question": "Which is red?\\nOptions: A: an apple, B: a leaf, C: the sky", "answer": "A",'
        ' "category": "coarse perception", "l2_category": "color"}\n'
        '{"question_id": "7", "question": "Which part?", "options": ["root", "leaf"], "answer": "1"}\n'
        '{"question_id": "8", "question": "What?", "choice_a": "x", "choice_b": "y", "answer": "B",'
        ' "question_type_id": 3}\n')
    star, ai2d, seed = read_items(rows)
    assert (star.question, star.options, star.l2) == ("Which is red?", ["an apple", "a leaf", "the sky"], "color")
    assert (ai2d.options, ai2d.id, seed.options, seed.category) == (["root", "leaf"], "7", ["x", "y"], "3")


def test_bad_rows_name_the_file_row_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q?", "A": "x", "B": "y", "answer": "E", "image": "missing.png"}\n')
    with pytest.raises(EvaluationError, match=r"bad.jsonl:1: image 'missing.png' not found"):
        read_items(bad)
    (tmp_path / "cat.png").write_bytes(files.png("chelsea"))
    bad.write_text('{"question": "q?", "A": "x", "B": "y", "answer": "E", "image": "cat.png"}\n')
    with pytest.raises(EvaluationError, match=r"bad.jsonl:1: answer 'E' is neither"):
        _run(lambda p: "A", "seed", bad)
    bad.write_text('{"answer": "A"}\n')
    with pytest.raises(EvaluationError, match=r"bad.jsonl:1: no 'question'"):
        read_items(bad)
    pope = files.pope_parquet(tmp_path / "p.parquet")
    with pytest.raises(EvaluationError, match=r"p.parquet:row_group 0:row 0: a multiple-choice row needs at least two options"):
        _run(lambda p: "yes", "mmbench", pope)  # POPE's file given as MMBench's
    with pytest.raises(EvaluationError, match="must be Yes or No"):
        _run(lambda p: "yes", "pope", files.vqa_jsonl(tmp_path / "vqa.jsonl"))
    bad.write_text('{"question": "Is it?", "answer": "maybe", "image": null}\n')
    with pytest.raises(EvaluationError, match="none of its 1 questions has an image"):
        _run(lambda p: "yes", "pope", bad)


def test_short_answer_normalisation():
    assert normalize_short_answer("The  Two cats!") == "2 cats"


def test_official_scorers_on_hand_made_results():
    rows = [{"correct": c, "category": "x", "group": g} for c, g in ((True, "0"), (True, "0"), (False, "1"))]
    rows = [{**r, "id": r["group"]} for r in rows]
    assert official.circular_accuracy(rows, "vlmevalkit")["circular_accuracy"] == 0.5
    assert official.category_accuracy(rows, "vlmevalkit")["accuracy"] == pytest.approx(2 / 3)
    mme = official.mme_scores([{**r, "category": "code_reasoning"} for r in rows], "vlmevalkit")
    assert mme["cognition"] == pytest.approx(100 * 2 / 3 + 50.0) and mme["perception"] == 0.0


def test_report_table_in_the_papers_layout(tmp_path):
    mme = _run(lambda p: "Yes", "mme", files.mme_tsv(tmp_path / "MME.tsv"))
    vista = _run(lambda p: "cat", "mathvista", files.vqa_jsonl(tmp_path / "vqa.jsonl"))
    table = format_table({"model": {"backend": "hf"}, "benchmarks": {"mathvista": vista, "mme": mme}})
    lines = table.splitlines()
    mme_line = next(i for i, line in enumerate(lines) if line.startswith("MME (generate, VLMEvalKit rules)"))
    assert lines[mme_line].split()[4:6] == ["perception", "100.00"]  # yes to all: acc 50 + acc+ 0 in each subtask
    assert lines[mme_line + 2].split()[:2] == ["count", "acc"]  # its subtasks below it
    assert any("MathVista (generate, VLMEvalKit rules)  exact match (official: LLM judge)" in line for line in lines)
    assert table.index("MME (generate") < table.index("MathVista")  # the paper's order, not the command line's


def test_a_damaged_row_group_of_a_benchmark_file_is_an_error_not_fewer_questions(tmp_path):
    import pyarrow.parquet as pq

    src = files.pope_parquet(tmp_path / "p.parquet")  # two rows per row group
    assert len(read_items(src)) > 2
    chunk = pq.ParquetFile(src).metadata.row_group(1).column(0)
    raw = bytearray(src.read_bytes())
    raw[chunk.data_page_offset:chunk.data_page_offset + 8] = b"\xff" * 8  # row group 1's page header
    src.write_bytes(bytes(raw))
    with pytest.raises(EvaluationError, match=r"p.parquet:row_group 1: cannot be decoded"):
        read_items(src)
