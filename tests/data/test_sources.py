"""Raw-source reading: bad encodings, symlink loops, skip reasons that name the file and line."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from megatron_solo.config.data import DataConfig, DatasetSource, PreprocessConfig
from megatron_solo.data import sources
from megatron_solo.data.preprocess import preprocess
from megatron_solo.data.skip_share import TooManySkips
from megatron_solo.errors import UserInputError
from tests.harness.data_sources import caption_tar, encode, real_images, write_jsonl
from tests.harness.paths import TOOLS

TOOL = TOOLS / "preprocess_data.py"


def _run(tmp_path, name="out", **kw):
    kw.setdefault("max_skip_share", 1.0)  # small sources with bad rows on purpose
    return preprocess(PreprocessConfig(output=str(tmp_path / name), workers=0, **kw), progress=False)


def _run_all_skipped(tmp_path, name="out", **kw) -> dict:
    """A run over inputs whose every record is skipped: it fails naming the file; its counts, for the checks."""
    with pytest.raises(TooManySkips, match="every one of its") as err:
        _run(tmp_path, name, **kw)
    assert any(str(i) in str(err.value) for i in kw["inputs"])
    return err.value.stats


def _latin1_jsonl(path: Path, gz: bool = False) -> Path:
    lines = [json.dumps({"text": "first document"}).encode(),
             '{"text": "caf\xe9 cr\xe8me"}'.encode("latin-1"),  # one Latin-1 line in a UTF-8 file
             json.dumps({"text": "third document"}).encode()]
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_non_utf8_jsonl_line_is_a_counted_skip(tmp_path, gz):
    src = _latin1_jsonl(tmp_path / ("t.jsonl.gz" if gz else "t.jsonl"), gz)
    stats = _run(tmp_path, kind="text", inputs=[str(src)])
    assert stats["samples"] == 2 and stats["skipped"] == {"bad_encoding": 1}
    assert any(f"{src}:2" in e and "UTF-8" in e for e in stats["skip_examples"])


def test_utf8_bom_and_label_file_lines(tmp_path):
    src = tmp_path / "bom.jsonl"
    src.write_bytes("\ufeff".encode() + b'{"text": "with a byte order mark"}\n')
    assert _run(tmp_path, "b", kind="text", inputs=[str(src)])["samples"] == 1
    img = tmp_path / "cat.png"
    img.write_bytes(encode(real_images()["chelsea"]))
    labels = tmp_path / "labels.csv"
    labels.write_bytes(b"cat.png,cat\n" + "caf\xe9.png,cat\n".encode("latin-1") + b"cat.png,feline\n")
    stats = _run(tmp_path, "c", kind="classification", inputs=[str(labels)])
    assert stats["samples"] == 2 and stats["skipped"] == {"bad_encoding": 1}
    assert any(f"{labels}:2" in e for e in stats["skip_examples"])


def test_non_utf8_json_list_is_a_whole_file_error(tmp_path):
    conv = tmp_path / "llava.json"
    conv.write_bytes('[{"conversations": [{"from": "human", "value": "\xe7a va?"}]}]'.encode("latin-1"))
    with pytest.raises(UserInputError, match="llava.json.*not UTF-8"):
        _run(tmp_path, kind="conversation", inputs=[str(conv)])
    names = tmp_path / "names.txt"
    names.write_bytes("chat\nb\xe9b\xe9\n".encode("latin-1"))
    with pytest.raises(UserInputError, match="names.txt.*not UTF-8"):
        sources.load_class_names(names)
    out = subprocess.run([sys.executable, str(TOOL), "--kind", "conversation", "--input", str(conv), "--output",
                          str(tmp_path / "cli"), "--workers", "0", "--quiet"], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "llava.json" in out.stderr and "Traceback" not in out.stderr


def test_symlink_loops_are_counted_and_good_links_kept(tmp_path):
    root = tmp_path / "train"
    cls = root / "n001"
    cls.mkdir(parents=True)
    photo = tmp_path / "elsewhere" / "astronaut.jpg"
    photo.parent.mkdir()
    photo.write_bytes(encode(real_images()["astronaut"], "JPEG"))
    (cls / "coffee.jpg").write_bytes(encode(real_images()["coffee"], "JPEG"))
    os.symlink(photo, cls / "linked.jpg")  # a symlink to a real image is an image
    os.symlink(cls / "loop_b.jpg", cls / "loop_a.jpg")
    os.symlink(cls / "loop_a.jpg", cls / "loop_b.jpg")
    os.symlink(cls / "self.jpg", cls / "self.jpg")
    os.symlink(tmp_path / "gone.jpg", cls / "dangling.jpg")
    os.symlink(root / "n000", root / "n000")  # a class folder that loops onto itself
    stats = _run(tmp_path, kind="classification", inputs=[str(root)])
    assert stats["samples"] == 2 and stats["records"] == 7
    assert stats["skipped"] == {"symlink_loop": 4, "broken_symlink": 1}
    examples = " | ".join(stats["skip_examples"])
    for name in ("loop_a.jpg", "loop_b.jpg", "self.jpg", "dangling.jpg", "n000"):
        assert str(root) in examples and name in examples


def test_image_skips_name_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    jpg = encode(real_images()["astronaut"], "JPEG")
    (folder / "truncated.jpg").write_bytes(jpg[: len(jpg) // 3])
    rows = [{"image": "imgs/truncated.jpg", "caption": "cut short"}]
    src = write_jsonl(tmp_path / "caps.jsonl", rows)
    (folder / "tall.png").write_bytes(encode(Image.new("RGB", (1, 100), (200, 10, 10))))
    doc = {"texts": ["A tall one.", None, None], "images": [None, "imgs/tall.png", "imgs/truncated.jpg"]}
    write_jsonl(tmp_path / "doc.jsonl", [doc])
    stats = _run_all_skipped(tmp_path, "t", kind="caption", inputs=[str(src)])
    assert stats["skipped"] == {"corrupt_image": 1}
    (example,) = stats["skip_examples"]
    assert str(folder / "truncated.jpg") in example and f"{src}:1" in example
    assert example.count("corrupt_image") == 1
    stats = _run_all_skipped(tmp_path, "d", kind="interleaved", inputs=[str(tmp_path / "doc.jsonl")])
    assert stats["skipped"] == {"aspect_ratio": 1}  # the first bad image of the document is named
    assert str(folder / "tall.png") in stats["skip_examples"][0]

    (folder / "big.png").write_bytes(encode(real_images()["chelsea"]))
    tar = caption_tar(tmp_path / "web.tar", n=2)  # images as bytes from a tar: the tar and key are named
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 451x300 is now a decompression bomb
    src = write_jsonl(tmp_path / "big.jsonl", [{"image": "imgs/big.png", "caption": "too many pixels"}])
    stats = _run_all_skipped(tmp_path, "b", kind="caption", inputs=[str(src)])
    assert stats["skipped"] == {"too_large": 1} and str(folder / "big.png") in stats["skip_examples"][0]
    stats = _run_all_skipped(tmp_path, "w", kind="caption", inputs=[str(tar)])
    assert stats["skipped"] == {"too_large": 2}
    assert all(f"{tar}:00000000" in e for e in stats["skip_examples"])


def test_jsonl_row_without_text_is_a_missing_field(tmp_path):
    src = write_jsonl(tmp_path / "t.jsonl", [{"text": "kept"}, {"body": "wrong schema"}, {"text": ""}])
    stats = _run(tmp_path, kind="text", inputs=[str(src)])
    assert stats["samples"] == 1 and stats["skipped"] == {"empty_text": 1, "missing_field": 1}
    assert any(f"{src}:2" in e and "'text'" in e for e in stats["skip_examples"])
    labels = write_jsonl(tmp_path / "l.jsonl", [{"image": "x.png"}])
    stats = _run_all_skipped(tmp_path, "l", kind="classification", inputs=[str(labels)])
    assert stats["skipped"] == {"missing_field": 1} and f"{labels}:1" in stats["skip_examples"][0]


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan")])
def test_bad_blend_weight_names_its_source(weight):
    with pytest.raises(UserInputError, match=f"shards/captions has weight {weight}"):
        DataConfig(datasets=[DatasetSource("shards/text", 1.0), DatasetSource("shards/captions", weight)])
    with pytest.raises(UserInputError, match="'?laion'? has weight"):
        DataConfig(datasets=[{"path": "x", "weight": weight, "name": "laion"}])
