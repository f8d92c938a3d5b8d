"""Preprocessing raw sources into shards: stats by skip reason, webdataset compatibility, resume, index checks."""

import json
import shutil

import numpy as np
import pytest
import webdataset as wds

from megatron_solo.config.data import PreprocessConfig
from megatron_solo.data.preprocess import preprocess
from megatron_solo.data.shards import ShardError, index_path, load_index, read_members, verify_shard
from megatron_solo.vocab import SoloTokenizer
from tests.harness.data_sources import (
    bad_image_files,
    caption_tar,
    classification_folder,
    encode,
    real_images,
    write_jsonl,
)
from tests.harness.paths import TOOLS


@pytest.fixture(scope="module")
def cls_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    return classification_folder(root / "train")


def _run(tmp_path, name="out", **kw):
    kw.setdefault("max_skip_share", 1.0)  # these sources are mostly bad on purpose: the skips are what is tested
    cfg = PreprocessConfig(output=str(tmp_path / name), workers=0, **kw)
    return cfg, preprocess(cfg, progress=False)


def test_classification_with_bad_images(cls_source, tmp_path):
    folder, names = cls_source
    cfg, stats = _run(tmp_path, kind="classification", inputs=[str(folder)], class_names=str(names),
                      caption_template="a photo of {}", shard_size=4)
    assert stats["skipped"] == {"missing_class_name": 3, "empty_file": 1, "corrupt_image": 2, "aspect_ratio": 2}
    assert stats["samples"] == 5 and stats["records"] == 13 and stats["images"] == 5
    assert stats["vision_tokens"] > 0 and stats["text_tokens"] > 0
    saved = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert saved["skipped"] == stats["skipped"]
    shards = sorted((tmp_path / "out").glob("*.tar"))
    assert len(shards) == 4 and not list((tmp_path / "out").glob("*.tmp*"))
    # webdataset reads our shards as they are
    got = list(wds.WebDataset([str(s) for s in shards], shardshuffle=False))
    assert len(got) == 5
    for sample in got:
        meta = json.loads(sample["json"])
        assert set(sample) >= {"__key__", "json", "tok", "0.jpg"}
        ids = np.frombuffer(sample["tok"], "<u2")
        assert sum(s["text"] for s in meta["segments"] if "text" in s) == len(ids)
    tok = SoloTokenizer()
    first = np.frombuffer(got[0]["tok"], "<u2")
    assert tok.decode(first) == "<s>a photo of astronaut or coffee</s>"
    for s in shards:
        index = verify_shard(s)
        assert (index.length == index.text_tokens + index.image_tokens).all()


def test_caption_tar_and_truncated_tar(tmp_path):
    good = caption_tar(tmp_path / "good.tar")
    bad = caption_tar(tmp_path / "bad.tar", n=6, truncate=True)
    _, stats = _run(tmp_path, kind="caption", inputs=[str(good), str(bad)], shard_size=100)
    # good.tar: 5 samples + sample 2's empty caption; bad.tar: the 2 samples before the damage are kept
    assert stats["skipped"] == {"empty_caption": 1, "truncated_tar": 1}
    assert stats["samples"] == 7
    assert any("bad.tar" in e for e in stats["skip_examples"])


def test_caption_jsonl_and_missing_image(tmp_path):
    imgs = tmp_path / "imgs"
    expected = bad_image_files(imgs)
    rows = [{"image": f"imgs/{name}", "caption": f"file {name}"} for name in expected]
    rows += [{"image": "imgs/nope.png", "caption": "missing"}, "{not json", {"caption": "no image"}]
    src = write_jsonl(tmp_path / "caps.jsonl", rows)
    _, stats = _run(tmp_path, kind="caption", inputs=[str(src)])
    assert stats["samples"] == sum(v is None for v in expected.values())
    assert stats["skipped"] == {"aspect_ratio": 2, "bad_json": 1, "corrupt_image": 2, "empty_file": 1,
                                "missing_file": 1, "missing_image": 1}
    # with max_aspect off, the 1x10000 and 10000x1 images are kept as one-patch-wide grids
    _, kept = _run(tmp_path, "out2", kind="caption", inputs=[str(src)], max_aspect=None)
    assert kept["samples"] == stats["samples"] + 2


def test_text_interleaved_conversation(tmp_path):
    txt = write_jsonl(tmp_path / "t.jsonl", [{"text": "short doc"}, {"text": "  "}, {"text": "word " * 3000}])
    _, stats = _run(tmp_path, "t", kind="text", inputs=[str(txt)])
    assert stats["samples"] == 2 and stats["skipped"] == {"empty_text": 1} and stats["text_tokens"] > 3000
    _, capped = _run(tmp_path, "t2", kind="text", inputs=[str(txt)], max_length=1000)
    assert capped["skipped"] == {"empty_text": 1, "too_long": 1}

    img = tmp_path / "cat.png"
    img.write_bytes(encode(real_images()["chelsea"]))
    mmc4 = write_jsonl(tmp_path / "m.jsonl", [
        {"text_list": ["A cat.", "It sleeps."], "image_info": [{"image_name": "cat.png", "matched_text_index": 1}]},
        {"texts": ["Intro", None, "Outro"], "images": [None, "cat.png", None]},
        {"something": "else"},
    ])
    _, stats = _run(tmp_path, "m", kind="interleaved", inputs=[str(mmc4)])
    assert stats["samples"] == 2 and stats["images"] == 2 and stats["skipped"] == {"bad_record": 1}

    conv = tmp_path / "llava.json"
    conv.write_text(json.dumps([
        {"id": "1", "image": "cat.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]},
        {"id": "2", "image": "cat.png", "conversations": [{"from": "human", "value": "<image>\nHello?"}]},
        {"id": "3", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
        {"id": "4", "image": "missing.png", "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]},
    ]))
    _, stats = _run(tmp_path, "c", kind="conversation", inputs=[str(conv)])
    assert stats["samples"] == 2 and stats["skipped"] == {"no_assistant_turn": 1, "missing_file": 1}


def test_resume_and_parallel_are_identical(cls_source, tmp_path):
    folder, names = cls_source
    kw = dict(kind="classification", inputs=[str(folder)], class_names=str(names), shard_size=3, max_skip_share=1.0)
    _, first = _run(tmp_path, "a", **kw)
    out = tmp_path / "a"
    shards = sorted(out.glob("*.tar"))
    before = {s.name: s.read_bytes() for s in shards}
    mtimes = {s.name: s.stat().st_mtime_ns for s in shards}
    index_path(shards[1]).unlink()  # as if the job died while writing shard 1
    (out / "shard-000002.tar.tmp").write_bytes(b"partial")
    _, again = _run(tmp_path, "a", **kw)
    assert again["resumed_shards"] == len(shards) - 1 and again["skipped"] == first["skipped"]
    assert not list(out.glob("*.tmp"))
    for s in shards:
        assert s.read_bytes() == before[s.name]
        assert (s.stat().st_mtime_ns == mtimes[s.name]) == (s != shards[1])
    cfg = PreprocessConfig(output=str(tmp_path / "p"), workers=2, **kw)
    preprocess(cfg, progress=False)
    for s in shards:
        assert (tmp_path / "p" / s.name).read_bytes() == before[s.name]
    with pytest.raises(ValueError, match="different preprocessing job"):
        _run(tmp_path, "a", **{**kw, "shard_size": 5})
    recorded = json.loads((out / "preprocess_config.json").read_text())
    del recorded["image_column"]  # a job written before the option existed ran with its default
    (out / "preprocess_config.json").write_text(json.dumps(recorded))
    assert _run(tmp_path, "a", **kw)[1]["resumed_shards"] == len(shards)


def test_whole_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.jsonl"):
        _run(tmp_path, kind="text", inputs=[str(tmp_path / "nothere.jsonl")])
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(ValueError, match="broken.json"):
        _run(tmp_path, "b", kind="conversation", inputs=[str(broken)])


def test_index_mismatch_detected(tmp_path):
    txt = write_jsonl(tmp_path / "t.jsonl", [{"text": f"document {i} " * (i + 1)} for i in range(6)])
    _run(tmp_path, kind="text", inputs=[str(txt)], shard_size=3)
    a, b = sorted((tmp_path / "out").glob("*.tar"))
    index = load_index(a)
    assert read_members(a, int(index.offset[1]), int(index.end[1]), str(index.keys[1]))["json"]
    with open(a, "ab") as f:  # grown shard: size no longer matches
        f.write(b"\0" * 512)
    with pytest.raises(ShardError, match="shard-000000.tar.*do not match"):
        load_index(a)
    shutil.copyfile(b, a)  # another shard under this name, same size class but different keys
    with pytest.raises(ShardError, match="shard-000000.tar"):
        verify_shard(a)
    with pytest.raises(ShardError, match="not part of sample|does not match"):
        read_members(a, int(index.offset[1]), int(index.end[1]), str(index.keys[1]))
    raw = a.read_bytes()
    a.write_bytes(raw[:700])
    with pytest.raises(ShardError, match="shard-000000.tar"):
        load_index(a)


def test_cli_tool(tmp_path):
    import subprocess
    import sys

    src = write_jsonl(tmp_path / "t.jsonl", [{"text": "hello there"}, {"text": ""}])
    tool = TOOLS / "preprocess_data.py"
    out = subprocess.run([sys.executable, str(tool), "--kind", "text", "--input", str(src), "--output",
                          str(tmp_path / "o"), "--workers", "0", "--quiet"], capture_output=True, text=True,
                         check=True)
    stats = json.loads(out.stdout)
    assert stats["samples"] == 1 and stats["skipped"] == {"empty_text": 1}
    assert (tmp_path / "o" / "stats.json").exists() and (tmp_path / "o" / "shard-000000.idx.npz").exists()


def test_malformed_records_cost_only_themselves(tmp_path):
    mm = write_jsonl(tmp_path / "m.jsonl", [
        {"text_list": ["x"], "image_info": [{"matched_text_index": 0}]},  # no image_name
        {"text_list": ["fine text"], "image_info": []},
    ])
    _, stats = _run(tmp_path, "m", kind="interleaved", inputs=[str(mm)])
    assert stats["samples"] == 1 and stats["skipped"] == {"bad_record": 1}
    conv = write_jsonl(tmp_path / "c.jsonl", [
        {"conversations": "not a list"},
        {"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    ])
    _, stats = _run(tmp_path, "c", kind="conversation", inputs=[str(conv)])
    assert stats["samples"] == 1 and sum(stats["skipped"].values()) == 2
    txt = write_jsonl(tmp_path / "t.jsonl", [{"text": 5}, {"text": "ok"}])
    _, stats = _run(tmp_path, "t", kind="text", inputs=[str(txt)])
    assert stats["samples"] == 1 and list(stats["skipped"]) == ["malformed_record:AttributeError"]


def test_partial_files_of_others_are_kept_and_own_ones_removed(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"document {i}"} for i in range(6)])
    out = tmp_path / "out"
    out.mkdir()
    theirs = {"draft.tmp": b"x", "notes.tmp.md": b"y", "shard-000000.tar.tmp.bak": b"z", "other-000001.tar.tmp": b"w"}
    for name, data in theirs.items():
        (out / name).write_bytes(data)
    (out / "shard-000001.tar.tmp").write_bytes(b"partial")  # an interrupted run of this tool
    (out / "shard-000001.idx.npz.tmp.npz").write_bytes(b"partial")
    _run(tmp_path, kind="text", inputs=[str(src)], shard_size=2)
    assert {n: (out / n).read_bytes() for n in theirs} == theirs
    assert not (out / "shard-000001.tar.tmp").exists() and not (out / "shard-000001.idx.npz.tmp.npz").exists()
    assert len(list(out.glob("shard-*.tar"))) == 3


def test_output_equal_to_input_is_refused(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_jsonl(src / "docs.jsonl", [{"text": "a document"}])
    with pytest.raises(ValueError, match="is also an --input"):
        preprocess(PreprocessConfig(kind="text", inputs=[str(src)], output=str(src), workers=0), progress=False)
    assert sorted(p.name for p in src.iterdir()) == ["docs.jsonl"]


def _flat_images(folder):
    folder.mkdir()
    for name, image in list(real_images().items())[:2]:
        image.save(folder / f"{name}.png")
    return folder


def _datasets_folder_without_state(folder):
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{}")
    (folder / "data-00000-of-00001.arrow").write_bytes(b"")
    return folder


@pytest.mark.parametrize("kind, make, expects", [
    ("classification", _flat_images, "classification takes a folder of class folders of images"),
    ("text", lambda path: write_jsonl(path.with_suffix(".jsonl"), []), "text takes rows with a text field"),
    ("classification", _datasets_folder_without_state, "classification takes a folder of class folders"),
])
def test_an_input_without_records_is_one_line_and_makes_nothing(kind, make, expects, tmp_path, capfd):
    from tests.harness.tool_runs import run_here

    source = make(tmp_path / "source")
    run = run_here(capfd, "preprocess_data.py", "--kind", kind, "--input", source, "--output", tmp_path / "out",
                   "--workers", "0", "--quiet")
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert f"{source}: no {kind} record in it; {expects}" in run.stderr
    assert not (tmp_path / "out").exists()
