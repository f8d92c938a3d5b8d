"""Tiny benchmark files in the harnesses' schemas, with real photos (skimage), for the benchmark tests.

- ``mmbench_tsv``: VLMEvalKit's MMBench TSV: question 0 in its four rotations (indexes 0, 1e6, 2e6, 3e6,
  the options shifted one place each time), question 1 once; base64 images, hint, category, l2-category;
- ``mme_tsv``: VLMEvalKit's MME TSV: two images, two questions each, the second row of an image naming
  the first row's index instead of repeating the base64;
- ``pope_parquet``: lmms-eval's POPE parquet (image as a {bytes, path} struct, question_id, category);
- ``pope_folder``: the same rows as a saved ``datasets`` folder (an Arrow stream + state.json, as
  ``Dataset.save_to_disk`` writes it);
- ``vqa_jsonl``: short answers, images as relative paths.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

from tests.harness.eval_data import photo

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
MMBENCH_OPTIONS = ["an astronaut", "a coffee cup", "a cat", "a rocket"]


def png(name: str, side: int = 64) -> bytes:
    """A skimage photo as PNG bytes, at most ``side`` pixels on its long side."""
    img = photo(name)
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _b64(name: str) -> str:
    return base64.b64encode(png(name)).decode()


def write_tsv(path: Path, rows: list[dict]) -> Path:
    """Rows as a VLMEvalKit TSV (the union of their columns, in order of appearance)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


def mmbench_tsv(path: Path) -> Path:
    """Question 0 (the cat, answer C at first) in four rotations and question 1 (the rocket) once."""
    rows = []
    for k in range(4):
        opts = MMBENCH_OPTIONS[k:] + MMBENCH_OPTIONS[:k]
        rows.append({"index": k * 1_000_000, "question": "What is in the picture?", "hint": "A photo.",
                     **dict(zip("ABCD", opts)), "answer": "ABCD"[opts.index("a cat")], "image": _b64("chelsea"),
                     "category": "object_localization", "l2-category": "perception", "split": "dev"})
    rows.append({"index": 1, "question": "What is in the picture?", "hint": "", **dict(zip("ABCD", MMBENCH_OPTIONS)),
                 "answer": "D", "image": _b64("rocket"), "category": "image_topic", "l2-category": "perception",
                 "split": "dev"})
    return write_tsv(path, rows)


def mme_tsv(path: Path) -> Path:
    """Two images (existence, count), two yes/no questions each; the second row names the first's image."""
    rows = [
        {"index": 0, "image": _b64("chelsea"), "question": "Is there a cat in this image? Please answer yes or no.",
         "answer": "Yes", "category": "existence"},
        {"index": 1, "image": "0", "question": "Is there a rocket in this image? Please answer yes or no.",
         "answer": "No", "category": "existence"},
        {"index": 2, "image": _b64("coffee"), "question": "Is there one cup in this image? Please answer yes or no.",
         "answer": "Yes", "category": "count"},
        {"index": 3, "image": "2", "question": "Are there three cups in this image? Please answer yes or no.",
         "answer": "No", "category": "count"},
    ]
    return write_tsv(path, rows)


POPE_ROWS = [("chelsea", "cat", "yes", "adversarial"), ("chelsea", "dog", "no", "adversarial"),
             ("coffee", "cup", "yes", "popular"), ("rocket", "rocket", "yes", "random"),
             ("rocket", "person", "no", "random")]


def _pope_table():
    import pyarrow as pa

    rows = [{"question_id": str(k), "question": f"Is there a {obj} in the image?", "answer": ans,
             "image_source": name, "image": {"bytes": png(name), "path": f"{name}.png"}, "category": cat}
            for k, (name, obj, ans, cat) in enumerate(POPE_ROWS)]
    return pa.Table.from_pylist(rows)


def pope_parquet(path: Path) -> Path:
    """lmms-eval's POPE columns: question_id, question, answer, image_source, image{bytes,path}, category."""
    import pyarrow.parquet as pq

    pq.write_table(_pope_table(), path, row_group_size=2)
    return path


def pope_folder(folder: Path) -> Path:
    """The POPE rows as ``datasets.Dataset.save_to_disk`` lays them out: an Arrow stream and state.json."""
    import pyarrow as pa

    folder.mkdir(parents=True)
    table = _pope_table()
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table, max_chunksize=3)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}],
                                                   "_split": "test"}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))
    return folder


def vqa_jsonl(path: Path) -> Path:
    """Three short-answer questions; the images beside the file."""
    for name in ("chelsea", "coffee"):
        (path.parent / f"{name}.png").write_bytes(png(name))
    rows = [{"id": "v0", "image": "chelsea.png", "question": "What animal is this?", "answer": "cat",
             "category": "animals"},
            {"id": "v1", "image": "coffee.png", "question": "How many cups are there?", "answers": ["1", "one"],
             "category": "counting"},
            {"id": "v2", "image": None, "question": "What color is the sky on a clear day?", "answer": "blue",
             "category": "text only"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


MME_ROWS = [("chelsea", "Is there a cat in this image?", "Yes", "existence"),
            ("chelsea", "Is there a dog in this image?", "No", "existence"),
            ("coffee", "Is the cup white?", "Yes", "color"),
            ("coffee", "Is the cup red?", "No", "color"),
            ("rocket", "Is this a rocket?", "Yes", "landmark"),
            ("rocket", "Is this photo taken at night?", "No", "landmark"),
            ("astronaut", "Is the person wearing a suit?", "Yes", "celebrity"),
            ("astronaut", "Is the person underwater?", "No", "celebrity")]


def mme_parquet(path: Path) -> Path:
    """lmms-eval's MME columns: question_id (the image's name, shared by its two questions of one subtask), image,
    question, answer, category."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question_id": f"{cat}/{name}.png", "image": {"bytes": png(name), "path": f"{name}.png"},
             "question": f"{q} Please answer yes or no.", "answer": ans, "category": cat}
            for name, q, ans, cat in MME_ROWS]
    table = pa.Table.from_pylist(rows)
    # the features record datasets writes beside its parquet: "image" is an Image (decoded to PIL on read)
    features = {"question_id": {"dtype": "string", "_type": "Value"}, "image": {"_type": "Image"},
                "question": {"dtype": "string", "_type": "Value"}, "answer": {"dtype": "string", "_type": "Value"},
                "category": {"dtype": "string", "_type": "Value"}}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    pq.write_table(table.replace_schema_metadata(meta), path)
    return path
