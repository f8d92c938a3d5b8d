"""One tiny file per benchmark and schema, its rows in the harness's own columns, and the scripted replies.

Each writer puts the same questions in VLMEvalKit's TSV (``vlmeval/dataset``: ``index``, ``question``,
options ``A``.., the answer letter, base64 ``image`` or the index of the row holding it) and in the
Hugging Face dataset lmms-eval's task loads (saved as parquet with the columns that dataset has).
The replies are chosen where the two harnesses read an answer differently, so the scores worked out
by hand in tests/evaluation/test_bench_schemas.py differ between the schemas.
"""

from __future__ import annotations

from pathlib import Path

from tests.harness.bench_schemas import b64, struct, write_parquet
from tests.harness.eval_benchmarks import write_tsv

MMBENCH_OPTIONS = ["an astronaut", "a coffee cup", "a cat", "a rocket"]
# (index, photo, question, options, category, l2-category): three circular groups, seven rows
MMBENCH = [(k * 1_000_000, "chelsea", "What animal is in the picture?", MMBENCH_OPTIONS[k:] + MMBENCH_OPTIONS[:k],
            "image_topic", "coarse_perception") for k in range(4)] + [
    (1, "rocket", "Which object is shown?", ["a rocket", "a cat"], "object_localization",
     "finegrained_perception (instance-level)"),
    (1_000_001, "rocket", "Which object is shown?", ["a cat", "a rocket"], "object_localization",
     "finegrained_perception (instance-level)"),
    (2, "coffee", "What is on the table?", MMBENCH_OPTIONS, "image_topic", "coarse_perception")]
MMBENCH_TRUTH = {"chelsea": "a cat", "rocket": "a rocket", "coffee": "a coffee cup"}
MMBENCH_REPLIES = {
    "picture?\nA. an astronaut": "C", "picture?\nA. a coffee cup": "B", "picture?\nA. a cat": "A",
    "picture?\nA. a rocket": "B is not it; it is a cat",  # VLMEvalKit: the option text, D; lmms-eval: B
    "shown?\nA. a rocket": "I think it is B, not A.",  # VLMEvalKit: two letters, unread; lmms-eval: "A." is A
    "shown?\nA. a cat": "B",
    "table?\nA. an astronaut": "C is not it; it is a coffee cup",  # VLMEvalKit: B by its text; lmms-eval: C
}


def _mmbench_rows(image) -> list[dict]:
    rows = []
    for index, name, question, options, category, l2 in MMBENCH:
        rows.append({"index": index, "question": question, "hint": "A photo." if name == "chelsea" else None,
                     **{"ABCD"[k]: o for k, o in enumerate(options)}, "answer": "ABCD"[options.index(
                         MMBENCH_TRUTH[name])], "category": category, "image": image(index, name),
                     "source": "tiny", "l2": l2, "comment": None, "split": "dev"})
    return rows


def mmbench_tsv(path: Path) -> Path:
    """VLMEvalKit's MMBench_DEV_EN.tsv: rotations name their main row's image by its index."""
    rows = _mmbench_rows(lambda index, name: b64(name) if index < 1_000_000 else str(index % 1_000_000))
    return write_tsv(path, [{("l2-category" if k == "l2" else k): ("" if v is None else v) for k, v in r.items()}
                            for r in rows])


def mmbench_parquet(path: Path) -> Path:
    """lmms-lab/MMBench (en, dev): the same columns, ``L2-category``, an image struct on every row."""
    rows = _mmbench_rows(lambda index, name: struct(name))
    return write_parquet(path, [{("L2-category" if k == "l2" else k): v for k, v in r.items()}
                                | {c: r.get(c) for c in "ABCD"} for r in rows])


# (photo, question, options, answer letter, category, l2-category, reply)
MMSTAR = [("chelsea", "Which letter marks the cat?", ["B", "A", "D", "C"], "B", "coarse perception",
           "image scene and topic", "B"),
          ("chelsea", "What is the mood of the scene?", ["calm", "angry", "sad", "scared"], "A", "coarse perception",
           "image emotion", "The correct answer is (A)."),
          ("coffee", "How many cups are there?", ["1", "2", "3", "4"], "A", "math",
           "numeric commonsense and calculation", "A"),
          ("chelsea", "What is the cat doing?", ["sleeping", "sitting", "running", "eating"], "B", "coarse perception",
           "image scene and topic", "A")]
MMSTAR_REPLIES = {q: reply for _, q, _, _, _, _, reply in MMSTAR}


def mmstar_tsv(path: Path) -> Path:
    """VLMEvalKit's MMStar.tsv (options in columns A..D, some of them letters themselves)."""
    return write_tsv(path, [{"index": k, "question": q, **dict(zip("ABCD", opts)), "answer": a, "category": c,
                             "l2-category": l2, "image": b64(name)}
                            for k, (name, q, opts, a, c, l2, _) in enumerate(MMSTAR)])


def mmstar_parquet(path: Path) -> Path:
    """Lin-Chen/MMStar (val): the options written inside the question, ``l2_category``, ``meta_info``."""
    rows = []
    for k, (name, q, opts, a, c, l2, _) in enumerate(MMSTAR):
        inline = ", ".join(f"{letter}: {o}" for letter, o in zip("ABCD", opts))
        rows.append({"index": k, "question": f"{q}\nOptions: {inline}", "image": struct(name), "answer": a,
                     "category": c, "l2_category": l2, "meta_info": {"source": "tiny", "split": "val"}})
    return write_parquet(path, rows)


# (photo, question, options, answer letter, question type, reply); the last one is a video question
SEED = [("chelsea", "What animal is shown?", ["a dog", "a cat", "a bird", "a fish"], "B", "Instance Identity",
         "B. a cat"),
        ("coffee", "What is on the table?", ["a cup", "a plate", "a book", "a phone"], "A", "Instance Attributes",
         "The cup"),
        ("rocket", "What is in the sky?", ["a bird", "a plane", "a rocket", "a kite"], "C", "Scene Understanding",
         "It is a rocket.")]
SEED_VIDEO = (("rocket", "astronaut"), "What happens in the video?", ["a landing", "a walk", "a launch", "a swim"],
              "C", "Action Recognition", "C")
SEED_REPLIES = {q: reply for _, q, _, _, _, reply in [*SEED, SEED_VIDEO]}


def seed_tsv(path: Path) -> Path:
    """VLMEvalKit's SEEDBench_IMG.tsv (image questions only; category the question type's name)."""
    return write_tsv(path, [{"index": k, "question": q, **dict(zip("ABCD", opts)), "answer": a, "category": t,
                             "image": b64(name)} for k, (name, q, opts, a, t, _) in enumerate(SEED)])


def seed_parquet(path: Path) -> Path:
    """lmms-lab/SEED-Bench (test): ``choice_a``.., ``data_type`` image or video, ``image`` a list of frames."""
    rows = []
    for k, (names, q, opts, a, _type, _) in enumerate([*SEED, SEED_VIDEO]):
        video = isinstance(names, tuple)
        rows.append({"answer": a, **{f"choice_{c}": o for c, o in zip("abcd", opts)}, "data_id": f"d{k}",
                     "data_type": "video" if video else "image", "question": q, "question_id": str(100 + k),
                     "question_type_id": 10 if video else k + 1,
                     "image": [struct(n) for n in (names if video else (names,))],
                     "segment": [0.0, 5.0] if video else None})
    return write_parquet(path, rows)


# (photo, question, options, answer index, TSV reply, parquet reply)
AI2D = [("chelsea", "Which label shows the leaf?", ["D", "C", "A", "B"], 2, "C", None),
        ("coffee", "How many legs does the insect have?", ["1", "2", "3", "4"], 2, None, "C."),
        ("coffee", "Which stage comes after the egg?", ["larva", "pupa", "adult", "egg"], 0, "(A) larva", "(A) larva"),
        ("rocket", "Which part absorbs water?", ["root", "stem", "leaf", "flower"], 0, "D flower", "a")]
AI2D_TSV_REPLIES = {q: tsv for _, q, _, _, tsv, _ in AI2D if tsv}
AI2D_PARQUET_REPLIES = {q: parquet for _, q, _, _, _, parquet in AI2D if parquet}


def ai2d_tsv(path: Path) -> Path:
    """VLMEvalKit's AI2D_TEST.tsv: options that are letters, the answer the letter of one."""
    return write_tsv(path, [{"index": k, "question": q, **dict(zip("ABCD", opts)), "answer": "ABCD"[a],
                             "image": b64(name)} for k, (name, q, opts, a, tsv, _) in enumerate(AI2D) if tsv])


def ai2d_parquet(path: Path) -> Path:
    """lmms-lab/ai2d (test): ``options`` a list (here numbers), ``answer`` the option's index as text."""
    return write_parquet(path, [{"question": q, "options": opts, "answer": str(a), "image": struct(name)}
                                for name, q, opts, a, _, parquet in AI2D if parquet])


# (photo or None, question, hint, choices, answer index, reply)
SCIENCEQA = [("chelsea", "Which animal is this?", "Look at the picture.", ["a dog", "a cat"], 1, "B."),
             ("rocket", "Which object is shown?", "", ["a rocket", "a kite", "a plane"], 0, "a rocket"),
             ("coffee", "What is the cup made of?", "", ["glass", "paper"], 0, "Paper"),
             (None, "Which word comes first in alphabetical order?", "", ["apple", "banana"], 0, "A")]
SCIENCEQA_REPLIES = {q: reply for _, q, _, _, _, reply in SCIENCEQA}


def scienceqa_tsv(path: Path) -> Path:
    """VLMEvalKit's ScienceQA_TEST.tsv (its image questions)."""
    return write_tsv(path, [{"index": k, "question": q, "hint": h, **dict(zip("ABCD", ch)), "answer": "ABCD"[a],
                             "image": b64(name), "category": "natural science", "split": "test"}
                            for k, (name, q, h, ch, a, _) in enumerate(SCIENCEQA) if name])


def scienceqa_parquet(path: Path) -> Path:
    """lmms-lab/ScienceQA (ScienceQA-IMG, test): ``choices``, ``answer`` an int index, ``image`` null for a few."""
    return write_parquet(path, [{"image": struct(name) if name else None, "question": q, "choices": ch, "answer": a,
                                 "hint": h, "task": "closed choice", "grade": "grade2", "subject": "natural science",
                                 "topic": "biology", "category": "Animals", "skill": "Identify animals",
                                 "lecture": "", "solution": ""}
                                for name, q, h, ch, a, _ in SCIENCEQA])


# (photo, question, answer, choices or None, reply)
MATHVISTA = [("coffee", "How many cups are there?", "1", None, "1"),
             ("chelsea", "What animal is this?", "cat", ["cat", "dog"], "A cat"),
             ("rocket", "What color is the rocket?", "white", None, "Red")]
MATHVISTA_REPLIES = {q: reply for _, q, _, _, reply in MATHVISTA}


def mathvista_tsv(path: Path) -> Path:
    """VLMEvalKit's MathVista_MINI.tsv (``choices`` a Python list's text)."""
    return write_tsv(path, [{"index": k + 1, "image": b64(name), "question": q, "answer": a,
                             "question_type": "multi_choice" if ch else "free_form", "answer_type": "text",
                             "choices": repr(ch) if ch else "", "precision": "", "task": "figure question answering"}
                            for k, (name, q, a, ch, _) in enumerate(MATHVISTA)])


def mathvista_parquet(path: Path) -> Path:
    """AI4Math/MathVista (testmini): ``image`` a relative path, the pixels in ``decoded_image``."""
    return write_parquet(path, [{"pid": str(k + 1), "question": q, "image": f"images/{k + 1}.jpg",
                                 "decoded_image": struct(name), "choices": ch, "unit": None, "precision": None,
                                 "answer": a, "question_type": "multi_choice" if ch else "free_form",
                                 "answer_type": "text", "metadata": {"category": "general-vqa", "task": "vqa"},
                                 "query": f"Question: {q}"} for k, (name, q, a, ch, _) in enumerate(MATHVISTA)])


# (photo, question, answer (alternatives joined by <OR>), capabilities, reply)
MMVET = [("chelsea", "What animal is this?", "cat", "rec", "Cat."),
         ("rocket", "What is being launched?", "rocket<OR>a rocket<OR>Falcon 9", "rec,know", "Falcon 9"),
         ("coffee", "How many cups are there?", "1", "rec", "Two")]
MMVET_REPLIES = {q: reply for _, q, _, _, reply in MMVET}


def mmvet_tsv(path: Path) -> Path:
    """VLMEvalKit's MMVet.tsv."""
    return write_tsv(path, [{"index": k, "image": b64(name), "question": q, "answer": a, "category": cap}
                            for k, (name, q, a, cap, _) in enumerate(MMVET)])


def mmvet_parquet(path: Path) -> Path:
    """lmms-lab/MMVet (test): ``capability`` a list."""
    return write_parquet(path, [{"question_id": f"v{k}", "image": struct(name), "question": q, "answer": a,
                                 "image_source": name, "capability": cap.split(",")}
                                for k, (name, q, a, cap, _) in enumerate(MMVET)])


# POPE: (id, question_id, photo, object, answer, split, reply); question_id restarts in each split
POPE_LMMS = [("0", "1", "chelsea", "cat", "yes", "adversarial", "Yes"),
             ("1", "2", "chelsea", "dog", "no", "adversarial", "No"),
             ("2", "1", "chelsea", "cat", "yes", "popular", "Yes"),
             ("3", "2", "chelsea", "bird", "no", "popular", "yes."),  # lmms-eval: neither yes nor no
             ("4", "1", "coffee", "cup", "yes", "random", "Yes"),
             ("5", "2", "rocket", "rocket", "yes", "random", "Yes, a rocket.")]
# (index, image, object, answer, category): VLMEvalKit joins the splits a question belongs to
POPE_VLMEVALKIT = [(0, "chelsea", "cat", "Yes", "adversarial,popular,random"), (1, "0", "dog", "No", "adversarial"),
                   (2, "coffee", "cup", "Yes", "popular,random"), (3, "rocket", "person", "No", "random")]
POPE_REPLIES = {"a cat ": "Yes", "a dog ": "No", "a bird ": "yes.", "a cup ": "Yes", "a rocket ": "Yes, a rocket.",
                "a person ": "Yes"}


def pope_tsv(path: Path) -> Path:
    """VLMEvalKit's POPE.tsv: ``category`` lists every split the question is in."""
    return write_tsv(path, [{"index": i, "image": b64(img) if not img.isdigit() else img,
                             "question": f"Is there a {obj} in the image?", "answer": a, "category": c}
                            for i, img, obj, a, c in POPE_VLMEVALKIT])


def pope_parquet(path: Path) -> Path:
    """lmms-lab/POPE (test): ``id``, ``question_id`` (restarting in each split), ``image_source``, ``category``."""
    return write_parquet(path, [{"id": i, "question_id": q, "question": f"Is there a {obj} in the image?",
                                 "answer": a, "image_source": f"COCO_val2014_{name}", "image": struct(name),
                                 "category": split} for i, q, name, obj, a, split, _ in POPE_LMMS])
