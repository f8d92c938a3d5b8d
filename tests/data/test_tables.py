"""Parquet, Arrow and saved `datasets` sources: each kind reads the same samples as its JSON(L) + files form,
bad rows are counted skips naming file, row group and row, and a damaged row group costs only itself."""

import json

import numpy as np
import pytest

from megatron_solo.config.data import PreprocessConfig
from megatron_solo.data.preprocess import preprocess
from megatron_solo.data.shard_set import ShardSet
from megatron_solo.data.tables import table_rows
from tests.harness.data_sources import caption_rows, image_bytes, write_jsonl, write_parquet


def _run(tmp_path, name, **kw):
    kw.setdefault("max_skip_share", 1.0)
    return preprocess(PreprocessConfig(output=str(tmp_path / name), workers=0, **kw), progress=False)


def _samples(folder) -> dict:
    """key -> (token ids, image bytes) of every stored sample."""
    shards = ShardSet(str(folder))
    out = {}
    for i in range(len(shards)):
        s = shards.read(i)
        out[s.key] = (s.ids.tolist(), [im.blob for im in s.images])
    return out


def _as_files(tmp_path, rows: list[dict], image_key: str = "image") -> list[dict]:
    """The rows with each image cell written to a file and replaced by its path (the JSONL form)."""
    out = []
    for i, row in enumerate(rows):
        row = dict(row)
        cell = row[image_key]
        if cell is not None:
            path = tmp_path / "files" / f"{i}.jpg"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(cell["bytes"])
            row[image_key] = str(path)
        out.append(row)
    return out


def test_caption_parquet_matches_jsonl_and_names_bad_rows(tmp_path):
    rows = caption_rows()
    src = write_parquet(tmp_path / "caps.parquet", rows, row_group_size=3)
    stats = _run(tmp_path, "pq", kind="caption", inputs=[str(src)])
    assert stats["samples"] == 4 and stats["skipped"] == {"corrupt_image": 1, "empty_caption": 1}
    examples = " ".join(stats["skip_examples"])
    assert f"{src}:row_group 1:row 0" in examples and f"{src}:row_group 1:row 1" in examples
    ref = write_jsonl(tmp_path / "caps.jsonl", _as_files(tmp_path, rows))
    _run(tmp_path, "ref", kind="caption", inputs=[str(ref)])
    got, want = _samples(tmp_path / "pq"), _samples(tmp_path / "ref")
    assert list(got) == list(want) and got == want  # same keys, same token ids, same stored image bytes


def test_columns_paths_and_a_saved_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = caption_rows()
    ds = datasets.Dataset.from_dict({"picture": [r["image"] for r in rows], "alt": [r["caption"] for r in rows]},
                                    features=datasets.Features({"picture": datasets.Image(),
                                                                "alt": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "hf"), max_shard_size="20KB")  # several Arrow files, in order
    assert len(list((tmp_path / "hf").glob("*.arrow"))) > 1
    kw = dict(kind="caption", image_column="picture", text_column="alt")
    stats = _run(tmp_path, "hf_out", inputs=[str(tmp_path / "hf")], **kw)
    assert stats["samples"] == 4 and stats["skipped"] == {"corrupt_image": 1, "empty_caption": 1}
    # the same rows as parquet with the images as relative paths under --image-root
    paths = [{"picture": f"files/{i}.jpg", "alt": r["caption"]} for i, r in enumerate(rows)]
    _as_files(tmp_path, rows)
    src = write_parquet(tmp_path / "paths.parquet", paths, row_group_size=2)
    _run(tmp_path, "paths_out", inputs=[str(src)], image_root=str(tmp_path), **kw)
    assert _samples(tmp_path / "hf_out") == _samples(tmp_path / "paths_out")


def test_conversations_llava_and_cauldron_parquet(tmp_path):
    blobs = image_bytes()
    llava = [
        {"id": "a", "image": {"bytes": blobs[0], "path": None}, "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "An astronaut."}]},
        {"id": "b", "image": {"bytes": blobs[1], "path": None}, "conversations": [
            {"from": "human", "value": "<image>\nNo answer?"}]},
        {"id": "c", "image": None, "conversations": [
            {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
    ]
    src = write_parquet(tmp_path / "llava.parquet", llava, row_group_size=2)
    stats = _run(tmp_path, "llava", kind="conversation", inputs=[str(src)])
    assert stats["samples"] == 2 and stats["images"] == 1 and stats["skipped"] == {"no_assistant_turn": 1}
    assert f"{src}:row_group 0:row 1" in stats["skip_examples"][0]
    ref = write_jsonl(tmp_path / "llava.jsonl", _as_files(tmp_path, [{**r, "image": r["image"] or None}
                                                                       for r in llava[:2]]) + [llava[2]])
    _run(tmp_path, "llava_ref", kind="conversation", inputs=[str(ref)])
    assert _samples(tmp_path / "llava") == _samples(tmp_path / "llava_ref")
    cauldron = [{"images": [{"bytes": blobs[2], "path": None}],
                 "texts": [{"user": "What animal?", "assistant": "A cat.", "source": "x"}]}]
    got = _run(tmp_path, "cauldron", kind="conversation",
               inputs=[str(write_parquet(tmp_path / "c.parquet", cauldron, 1))])
    as_llava = [{"image": str(tmp_path / "cat.jpg"), "conversations": [
        {"from": "human", "value": "What animal?"}, {"from": "gpt", "value": "A cat."}]}]
    (tmp_path / "cat.jpg").write_bytes(blobs[2])
    _run(tmp_path, "cauldron_ref", kind="conversation", inputs=[str(write_jsonl(tmp_path / "c.jsonl", as_llava))])
    assert got["samples"] == 1 and _samples(tmp_path / "cauldron") == _samples(tmp_path / "cauldron_ref")


def test_obelics_interleaved_parquet_with_nulls(tmp_path):
    blobs = image_bytes()
    docs = [
        {"texts": ["An intro.", None, "The end."], "images": [None, {"bytes": blobs[0], "path": None}, None]},
        {"texts": [None, "Caption after."], "images": [{"bytes": blobs[1], "path": None}, None]},
        {"texts": ["Broken image next.", None], "images": [None, {"bytes": b"\x00garbage", "path": None}]},
    ]
    src = write_parquet(tmp_path / "obelics.parquet", docs, row_group_size=2)
    stats = _run(tmp_path, "ob", kind="interleaved", inputs=[str(src)])
    assert stats["samples"] == 2 and stats["images"] == 2 and stats["skipped"] == {"corrupt_image": 1}
    assert f"{src}:row_group 1:row 0" in stats["skip_examples"][0]
    ref_docs = []
    for d, doc in enumerate(docs[:2]):
        images = []
        for j, cell in enumerate(doc["images"]):
            if cell is not None:
                (tmp_path / f"{d}_{j}.jpg").write_bytes(cell["bytes"])
            images.append(None if cell is None else f"{d}_{j}.jpg")
        ref_docs.append({"texts": doc["texts"], "images": images})
    _run(tmp_path, "ob_ref", kind="interleaved", inputs=[str(write_jsonl(tmp_path / "ob.jsonl", ref_docs))])
    assert _samples(tmp_path / "ob") == _samples(tmp_path / "ob_ref")


def test_text_parquet_and_a_damaged_row_group(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": f"document number {i} " * 40} for i in range(6)]
    src = tmp_path / "docs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src, row_group_size=2, compression="snappy", use_dictionary=False)
    assert _run(tmp_path, "t", kind="text", inputs=[str(src)])["samples"] == 6
    meta = pq.ParquetFile(src).metadata
    chunk = meta.row_group(1).column(0)
    raw = bytearray(src.read_bytes())
    start = chunk.data_page_offset  # row group 1's page header: the reader cannot decode that group
    raw[start:start + 8] = b"\xff" * 8
    src.write_bytes(bytes(raw))
    got = list(table_rows(src, "parquet"))
    assert [w for w, r in got if "skip" in r] == [f"{src}:row_group 1"]
    assert [r["text"] for _, r in got if "skip" not in r] == [r["text"] for r in rows[:2] + rows[4:]]
    stats = _run(tmp_path, "t2", kind="text", inputs=[str(src)])
    assert stats["samples"] == 4 and stats["skipped"] == {"bad_row_group": 1}
    saved = json.loads((tmp_path / "t2" / "stats.json").read_text())
    assert saved["inputs"][str(src)] == {"records": 5, "skipped": {"bad_row_group": 1}}
    assert np.isfinite(saved["vision_share"])


def test_classification_parquet_rows_and_empty_cells(tmp_path):
    from megatron_solo.data.sources import classification_records

    blobs = image_bytes()
    rows = [{"image": {"bytes": blobs[0], "path": "a.jpg"}, "label": 1},
            {"image": {"bytes": None, "path": None}, "label": 2}, {"image": {"bytes": blobs[1], "path": None},
                                                                   "label": None}]
    src = write_parquet(tmp_path / "labels.parquet", rows, row_group_size=2)
    got = list(classification_records([str(src)]))
    assert got[0]["image"] == blobs[0] and got[0]["label"] == "1" and got[0]["id"] == "a"
    assert got[1] == {"skip": "missing_field", "error": f"{src}:row_group 0:row 1: no 'image' field"}
    assert got[2] == {"skip": "missing_field", "error": f"{src}:row_group 1:row 0: no 'label' field"}
