"""Evaluation pieces without a model: batching, the target layout, answer parsing, inputs, report, CLI errors."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from megatron_solo.config.evaluation import EvalConfig
from megatron_solo.data.samples import expand
from megatron_solo.data.shard_set import preprocess_config
from megatron_solo.errors import run_tool
from megatron_solo.evaluation.documents import Doc, collate, continuation_doc, plan_batches, prompt_doc
from megatron_solo.evaluation.errors import EvaluationError
from megatron_solo.evaluation.heldout import StoredSample, truncate
from megatron_solo.evaluation.mcq import answer_index, best_options, load_questions, parse_letter, prompt_text
from megatron_solo.evaluation.report import format_table, write_report
from megatron_solo.evaluation.run import check_config, parse_source
from megatron_solo.evaluation.scoring import row_sums, strip_eos
from megatron_solo.evaluation.tasks import caption_candidates
from megatron_solo.vocab import VPATCH_ID, image_block
from tests.harness.paths import REPO


def test_plan_batches_respects_budget_and_keeps_every_document_once():
    lengths = [5, 40, 7, 7, 100, 3, 39, 8]
    batches = plan_batches(lengths, batch_tokens=80, max_batch=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [4]  # longer than the budget: alone
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 80)
    flat = [i for b in batches for i in b]
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first, similar lengths together
    assert [i for b in plan_batches(lengths, 80, 3, sort=False) for i in b] == list(range(len(lengths)))


def test_collate_shifts_targets_onto_labels_and_orders_patches_batch_major():
    a = continuation_doc([1, VPATCH_ID, 5], [6, 2], torch.full((1, 4), 1.0))
    b = continuation_doc([1, VPATCH_ID, VPATCH_ID], [9], torch.stack([torch.full((4,), 2.0), torch.full((4,), 3.0)]))
    batch = collate([a, b], pad_id=0)
    assert batch.tokens.tolist() == [[1, VPATCH_ID, 5, 6, 2], [1, VPATCH_ID, VPATCH_ID, 9, 0]]
    assert batch.labels.tolist() == [[VPATCH_ID, 5, 6, 2, 0], [VPATCH_ID, VPATCH_ID, 9, 0, 0]]
    # position i predicts labels[i]: the targets 6, 2 (row 0) and 9 (row 1) and nothing else, no padding
    assert batch.label_mask.tolist() == [[False, False, True, True, False], [False, False, True, False, False]]
    assert batch.patches[:, 0].tolist() == [1.0, 2.0, 3.0] and batch.num_patches.tolist() == [1, 2]
    assert batch.lengths.tolist() == [5, 4] and batch.position_ids[1].tolist() == [0, 1, 2, 3, 4]
    logprobs = torch.tensor([-1.0, -2.0, -4.0])  # row-major over label_mask
    assert row_sums(logprobs, batch.label_mask).tolist() == [-3.0, -4.0]
    assert prompt_doc([1, 2, 3]).num_targets == 0
    with pytest.raises(ValueError, match="first token"):
        Doc(np.array([1, 2]), np.array([True, False]))


def test_truncate_never_cuts_inside_an_image_block():
    block = image_block(2, 2)  # 7 tokens
    meta = [{"text": 2, "loss": 0}, {"image": "0.jpg", "rows": 2, "cols": 2}, {"text": 3, "loss": 1},
            {"image": "1.jpg", "rows": 2, "cols": 2}, {"text": 2, "loss": 1}]
    ids, target, images = expand(meta, np.array([1, 7, 10, 11, 12, 13, 2], dtype=np.uint16))
    patches = torch.arange(8.0)[:, None].expand(8, 3)
    sample = StoredSample("k", "interleaved", Doc(ids, target, patches), [(a, b) for a, b, *_ in images],
                          [(r, c) for *_, r, c in images])
    assert len(sample.doc) == 21 and ids[2:9].tolist() == block.tolist()
    same, cut = truncate(sample, 21, VPATCH_ID)
    assert not cut and same is sample.doc
    doc, cut = truncate(sample, 15, VPATCH_ID)  # 15 falls inside the second block [12, 19)
    assert cut and len(doc) == 12 and doc.patches[:, 0].tolist() == [0, 1, 2, 3]
    doc, _ = truncate(sample, 20, VPATCH_ID)
    assert len(doc) == 20 and doc.patches.shape[0] == 8
    doc, _ = truncate(sample, 5, VPATCH_ID)
    assert doc.ids.tolist() == [1, 7] and doc.patches is None


def test_parse_letter_takes_the_first_standalone_letter_naming_an_option():
    assert parse_letter("B", 4) == 1
    assert parse_letter(" (C) a cat", 4) == 2
    assert parse_letter("I think the answer is D.", 4) == 3  # "I" names no option of four
    assert parse_letter("Answer: A", 4) == 0
    assert parse_letter("ABC is not a letter", 4) is None
    assert parse_letter("the cat", 4) is None
    assert parse_letter("E", 4) is None and parse_letter("E", 5) == 4


def test_answer_forms_and_bad_answers():
    opts = ["an astronaut", "a coffee cup", "a cat", "a rocket"]
    assert [answer_index(a, opts, "x") for a in ("A", "b", "C.", "(D)", 1, "2", "a rocket")] == [0, 1, 2, 3, 1, 2, 3]
    for bad in ("E", 4, -1, "a dog", True, None):
        with pytest.raises(EvaluationError, match="x:"):
            answer_index(bad, opts, "x")


def test_load_questions_resolves_images_and_names_bad_lines(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text(json.dumps({"image": "img.png", "question": " Q? ", "options": {"B": "y", "A": "x"},
                             "answer": "y"}) + "\n\n")
    (q,) = load_questions(f)
    assert (q.images, q.question, q.options, q.answer) == ([str(tmp_path / "img.png")], "Q?", ["x", "y"], 1)
    assert prompt_text(q, "plain", False) == "Q?\nA. x\nB. y\nAnswer:"
    assert prompt_text(q, "chat", True).endswith("B. y\nAnswer with the option's letter from the given choices "
                                                 "directly.")
    f.write_text(json.dumps({"question": "Q", "options": ["x", "y"], "answer": "A"}) + "\n{not json\n")
    with pytest.raises(EvaluationError, match=r"q.jsonl:2: not valid JSON"):
        load_questions(f)
    f.write_text(json.dumps({"question": "Q", "options": ["x"], "answer": "A"}) + "\n")
    with pytest.raises(EvaluationError, match=r"q.jsonl:1: 'options'"):
        load_questions(f)
    good = json.dumps({"question": "Q", "options": ["x", "y"], "answer": 0}) + "\n"
    f.write_text(good * 2 + "{not json\n")
    assert len(load_questions(f, max_items=2)) == 2  # stops before the broken line


def test_bad_option_sets_ids_encodings_and_ambiguous_answers_name_the_row(tmp_path):
    f = tmp_path / "q.jsonl"
    row = {"question": "Q", "options": ["x", "y"], "answer": 0}
    cases = [({**row, "options": ["same", "same"]}, "q.jsonl:1: options repeat 'same'"),
             ({**row, "options": ["x", " "]}, "q.jsonl:1: option B is empty"),
             ({**row, "options": ["B", "A", "C"], "answer": "A"}, "q.jsonl:1: answer 'A' is both the letter")]
    for bad, message in cases:
        f.write_text(json.dumps(bad) + "\n")
        with pytest.raises(EvaluationError, match=message):
            load_questions(f)
    f.write_text(json.dumps({**row, "id": "q7"}) + "\n" + json.dumps({**row, "id": "q7"}) + "\n")
    with pytest.raises(EvaluationError, match="q.jsonl:2: question id 'q7' repeats the one on line 1"):
        load_questions(f)
    f.write_bytes(json.dumps(row).encode() + b"\n" + b'{"question": "caf\xe9"}\n')
    with pytest.raises(EvaluationError, match="q.jsonl:2: not UTF-8"):
        load_questions(f)


def test_tied_options_are_counted_and_never_right():
    pairs = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]
    scores = [-1.0, -1.0, -3.0, -2.0, -2.5, -4.0, -4.0 + 1e-9]
    assert best_options(pairs, scores, 3) == [None, 1, 1]


def test_sources_configs_and_candidates(tmp_path):
    held = tmp_path / "imagenet" / "heldout"
    held.mkdir(parents=True)
    assert parse_source(str(held)) == (str(held), "imagenet/heldout")
    assert parse_source(f"{held}:val") == (str(held), "val")
    assert preprocess_config(held) == {}
    (tmp_path / "imagenet" / "preprocess_config.json").write_text(json.dumps({"caption_template": "a {}"}))
    assert preprocess_config(held) == {"caption_template": "a {}"}  # beside OUTPUT, above OUTPUT/heldout

    class Tok:
        eos_id = 2

        def encode(self, text):
            return [ord(c) for c in text]

    cands, labels = caption_candidates({"0": "cat ", "1": "dog", "2": "cat"}, "a {}.", Tok())
    assert labels == ["cat / cat", "dog"] and cands[0] == [ord(c) for c in "a cat."] + [2]
    with pytest.raises(EvaluationError, match="template"):
        caption_candidates({"0": "cat"}, "a {0} {1}", Tok())


def test_check_config_refuses_before_loading_anything(tmp_path):
    with pytest.raises(EvaluationError, match="exactly one"):
        check_config(EvalConfig(val_data=["x"]))
    with pytest.raises(EvaluationError, match="nothing to evaluate"):
        check_config(EvalConfig(hf="x"))
    with pytest.raises(EvaluationError, match="--mcq .*no such file"):
        check_config(EvalConfig(hf=str(tmp_path), mcq=str(tmp_path / "missing.jsonl")))
    with pytest.raises(EvaluationError, match="--max-samples must be at least 1"):
        check_config(EvalConfig(hf=str(tmp_path), mcq=str(tmp_path), max_samples=0))


def _tool():
    spec = importlib.util.spec_from_file_location("evaluate_tool", REPO / "tools" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    main = _tool().main
    assert run_tool(main, ["--checkpoint", str(tmp_path / "nope"), "--val-data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope: no such checkpoint directory" in err
    assert run_tool(main, ["--hf", str(tmp_path), "--val-data", str(tmp_path)]) == 2
    assert "not an exported model directory" in capsys.readouterr().err
    assert run_tool(main, ["--hf", "a", "--checkpoint", "b"]) == 2  # both models
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--checkpoint: not allowed with argument --hf" in err


def test_cli_refuses_a_layout_the_checkpoint_cannot_take(tmp_path, capsys):
    import dataclasses

    from megatron_solo.checkpoint.metadata import write_metadata
    from megatron_solo.config import ParallelConfig, model_preset

    (tmp_path / "iter_0000000").mkdir()
    (tmp_path / "iter_0000000" / "metadata.json").write_text("{}")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("0")
    write_metadata(tmp_path, dataclasses.replace(model_preset("solo-tiny"), num_layers=3), ParallelConfig())
    main = _tool().main
    assert run_tool(main, ["--checkpoint", str(tmp_path), "--tensor-parallel", "3", "--val-data", str(tmp_path)]) == 2
    assert "'num_attention_heads' = 4 is not divisible by tensor_parallel 3" in capsys.readouterr().err
    assert run_tool(main, ["--checkpoint", str(tmp_path), "--pipeline-parallel", "2", "--val-data", str(tmp_path)]) == 2
    assert "3 layers cannot be split over 2 pipeline stages" in capsys.readouterr().err


def test_report_json_and_table(tmp_path):
    report = {"model": {"backend": "hf", "layout": "single process", "dtype": "float32", "model": "m"},
              "val_loss": {"text": {"loss": 2.5, "documents": 3, "tokens": 40, "images": 0, "images_per_s": 0.0}},
              "classification": {"top1": 0.5, "top5": 1.0, "samples": 2, "classes": 4, "images": 2,
                                 "images_per_s": 3.0},
              "mcq": {"template": "plain", "questions": 2, "loglik": {"accuracy": 0.5},
                      "generate": {"accuracy": 0.0, "unparsed": 1}, "images": 2, "images_per_s": 1.0},
              "captions": {"items": [{"image": "/x/cat.png", "caption": "a cat"}], "images": 1, "images_per_s": 1.0}}
    path = write_report(report, tmp_path / "sub" / "report.json")
    assert json.loads(path.read_text()) == report and not list(path.parent.glob("*.tmp"))
    table = format_table(report)
    assert "val loss text" in table and "2.5000" in table and "0.5000 / 1.0000" in table
    assert "mcq generate (plain)" in table and "1 unparsed" in table and "caption cat.png: 'a cat'" in table
    assert strip_eos([5, 6, 2, 7], 2) == [5, 6] and strip_eos([5], 2) == [5]


def test_pixel_baseline_resamples_other_sizes_to_the_most_common_one():
    from megatron_solo.evaluation.baseline import _features, common_size

    small = torch.rand(3, 32, 64)
    big = small.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # the same picture at twice the size
    assert common_size([small, big, small.clone()]) == (32, 64)
    assert common_size([small, big]) == (32, 64)  # a tie goes to the smaller size
    rows = _features([small, big], (32, 64))
    assert rows.shape == (2, 3 * 32 * 64)
    assert np.array_equal(rows[0], small.reshape(-1).numpy())  # the common size is left untouched
    np.testing.assert_allclose(rows[1], rows[0], atol=1e-5)  # 2x2 blocks average back to their pixel


def test_out_and_layout_and_baseline_classes_are_checked_before_any_model(tmp_path):
    from PIL import Image

    from megatron_solo.config import ParallelConfig
    from megatron_solo.config.data import PreprocessConfig
    from megatron_solo.data.preprocess import preprocess

    (tmp_path / "raw" / "cats").mkdir(parents=True)
    for k in range(3):
        Image.new("RGB", (32, 32), (40 * k, 0, 0)).save(tmp_path / "raw" / "cats" / f"{k}.png")
    shards = tmp_path / "shards"
    preprocess(PreprocessConfig(kind="classification", inputs=[str(tmp_path / "raw")], output=str(shards),
                                workers=0), progress=False)
    base = dict(hf=str(tmp_path), val_data=[str(shards)])
    with pytest.raises(EvaluationError, match="--out .*is a folder"):
        check_config(EvalConfig(**base, out=str(tmp_path)))
    with pytest.raises(EvaluationError, match="--out .*not a writable folder"):
        check_config(EvalConfig(**base, out=str(tmp_path / "raw" / "cats" / "0.png" / "report.json")))
    with pytest.raises(EvaluationError, match="--tensor-parallel/--pipeline-parallel are for --checkpoint"):
        check_config(EvalConfig(**base, parallel=ParallelConfig(tensor_parallel=2)))
    with pytest.raises(EvaluationError, match="--baseline-train .*3 samples hold 1 class"):
        check_config(EvalConfig(**base, classify=str(shards), baseline_train=str(shards)))
    with pytest.raises(EvaluationError, match="cannot write the report"):
        write_report({"a": 1}, tmp_path / "raw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "shards"]  # no report.tmp left behind
