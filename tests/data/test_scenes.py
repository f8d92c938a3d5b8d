"""Generated scenes: the pictures show what the text says, held-out scenes are new, blanking hides them."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from megatron_solo.data import scenes as sc
from megatron_solo.data.kinds import iter_records
from megatron_solo.errors import UserInputError
from megatron_solo.evaluation.benchmarks import SHORT_ANSWER_PROMPT
from megatron_solo.evaluation.mcq import load_questions, prompt_text


def _rows(path):
    return [json.loads(line) for line in open(path)]


def _colour_in_cell(img: np.ndarray, place: str) -> str | None:
    """The palette colour covering most of a cell's non-background pixels, read back from the pixels."""
    cell = sc.PLACES.index(place)
    y, x = (cell // 2) * sc.CELL, (cell % 2) * sc.CELL
    pixels = img[y:y + sc.CELL, x:x + sc.CELL].reshape(-1, 3).astype(int)
    ink = pixels[np.abs(pixels - sc.BACKGROUND).sum(1) > 30]
    if len(ink) < 20:
        return None
    return min(sc.COLOURS, key=lambda c: np.abs(ink - sc.COLOURS[c]).sum(1).mean())


def _fill(img: np.ndarray, place: str, size: int) -> float:
    cell = sc.PLACES.index(place)
    y, x = (cell // 2) * sc.CELL, (cell % 2) * sc.CELL
    ink = np.abs(img[y:y + sc.CELL, x:x + sc.CELL].astype(int) - sc.BACKGROUND).sum(-1) > 30
    return ink.sum() / size**2


def test_pixels_hold_the_captioned_colours_places_and_shapes():
    rng = random.Random(5)
    for _ in range(60):
        scene = sc.draw_scene(rng)
        img = np.asarray(sc.render(scene))
        assert img.shape == (sc.SIDE, sc.SIDE, 3)
        by_place = {s.place: s for s in scene.shapes}
        for place in sc.PLACES:
            s = by_place.get(place)
            assert _colour_in_cell(img, place) == (s.colour if s else None)
            if s:  # a square fills its box, a circle about pi/4 of it, a triangle about half
                expected = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}[s.shape]
                assert abs(_fill(img, place, s.size) - expected) < 0.12, (s, _fill(img, place, s.size))
        assert not np.abs(np.asarray(sc.render(scene, blank=True)).astype(int) - sc.BACKGROUND).any()


def test_caption_and_questions_state_the_scene():
    scene = sc.Scene((sc.Shape("circle", "red", "top left", 20, 2, 2),
                      sc.Shape("square", "orange", "bottom right", 20, 2, 2)))
    assert sc.caption(scene) == "two shapes: a red circle at the top left and an orange square at the bottom right."
    qa = {q: a for q, a, _ in sc.questions(scene, random.Random(0))}
    assert qa == {"How many shapes are there?": "two",
                  "What colour is the shape at the top left?": "red", "What shape is at the top left?": "circle",
                  "What colour is the shape at the bottom right?": "orange",
                  "What shape is at the bottom right?": "square",
                  "Where is the red shape?": "top left", "Where is the orange shape?": "bottom right"}
    same = sc.Scene((sc.Shape("circle", "red", "top left", 20, 2, 2), sc.Shape("square", "red", "top right", 20, 2, 2)))
    assert not any(q.startswith("Where") for q, _, _ in sc.questions(same, random.Random(0)))  # ambiguous


def test_counts_kinds_and_colours_are_balanced():
    rng = random.Random(0)
    drawn = [sc.draw_scene(rng) for _ in range(4000)]
    for values in ([len(s.shapes) for s in drawn], [o.colour for s in drawn for o in s.shapes],
                   [o.shape for s in drawn for o in s.shapes]):
        counts = np.unique(values, return_counts=True)[1]
        assert counts.min() / counts.max() > 0.9  # no answer wins by its prior


def test_written_sources_read_back_and_heldout_scenes_are_new(tmp_path):
    files = sc.write_scenes(tmp_path, 60, heldout=30)
    root = tmp_path / "scenes"
    caps = list(iter_records("caption", [files["captions"]]))
    assert len(caps) == 60 and all(Image.open(r["image"]).size == (sc.SIDE, sc.SIDE) for r in caps)
    assert len(list(iter_records("caption", [files["vqa"]]))) == 60
    convs = list(iter_records("conversation", [files["conversations"]]))
    assert len(convs) == 60 and all(len(c["turns"]) == 4 and len(c["images"]) == 1 for c in convs)
    questions = load_questions(files["mcq"])
    assert len(questions) == 30 and all(2 <= len(q.options) <= 4 for q in questions)
    # the SFT turns ask multiple choice exactly as the evaluation prompts it under the chat template
    mc_turns = [t["value"] for c in _rows(files["conversations"]) for t in c["conversations"] if "\nA. " in t["value"]]
    assert mc_turns and all(t.removeprefix("<image>\n").count("\n") >= 2 for t in mc_turns)
    assert prompt_text(questions[0], "chat", letter=False) == sc.mcq_text(questions[0].question, questions[0].options)
    short = _rows(files["short_answer"])
    assert len(short) == 30 and all(r["answer"] and r["question"] for r in short)
    # ... and the short-answer turns end with the instruction the short-answer benchmark prompts with
    open_turns = [t["value"] for c in _rows(files["conversations"]) for t in c["conversations"]
                  if t["from"] == "human" and "\nA. " not in t["value"]]
    assert open_turns and all(t.endswith(SHORT_ANSWER_PROMPT) for t in open_turns)
    # every held-out image shows a layout no training image has
    train = {sc.Scene(s.shapes).layout() for s in sc._scenes(sc.TRAIN_SEED, 60)}
    held = sc._scenes(sc.HELDOUT_SEED, 30, exclude=train)
    assert not {s.layout() for s in held} & train
    assert len(list((root / "images").glob("heldout_*.png"))) == 30


def test_blank_variant_keeps_the_text_and_hides_the_pictures(tmp_path):
    seen, blank = tmp_path / "seen", tmp_path / "blank"
    sc.write_scenes(seen, 20, heldout=5)
    sc.write_scenes(blank, 20, heldout=5, blank=True)
    for name in ("captions", "vqa", "conversations", "mcq", "short_answer"):
        assert (seen / "scenes" / f"{name}.jsonl").read_text() == (blank / "scenes" / f"{name}.jsonl").read_text()
    pictures = sorted((blank / "scenes" / "images").iterdir())
    assert len({p.read_bytes() for p in pictures}) == 1
    (tmp_path / "digits" / "3").mkdir(parents=True)
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "digits" / "3" / "a.png")
    assert sc.blank_images(tmp_path / "digits") == 1
    with Image.open(tmp_path / "digits" / "3" / "a.png") as img:
        assert img.size == (8, 8) and set(np.asarray(img).ravel()) == {sc.BACKGROUND[0]}


def test_bad_counts_are_refused(tmp_path):
    with pytest.raises(UserInputError, match=r"count \(0\).*at least 1"):
        sc.write_scenes(tmp_path, 0)
