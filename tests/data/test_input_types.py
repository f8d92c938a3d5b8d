"""Inputs are taken by content: a file no reader of the kind takes is a one-line error, and a run that skips
every record of a file, or more than --max-skip-share of them, fails naming the file and the commonest reason."""

import subprocess
import sys

import pytest

from megatron_solo.config.data import PreprocessConfig
from megatron_solo.data.input_types import UnreadableInput, input_type
from megatron_solo.data.preprocess import preprocess
from megatron_solo.data.skip_share import TooManySkips
from megatron_solo.errors import UserInputError
from tests.harness.data_sources import (
    caption_rows,
    caption_tar,
    encode,
    real_images,
    write_jsonl,
    write_parquet,
)
from tests.harness.paths import TOOLS


def _tool(tmp_path, *args):
    return subprocess.run([sys.executable, str(TOOLS / "preprocess_data.py"), *args, "--output",
                           str(tmp_path / "out"), "--workers", "0", "--quiet"], capture_output=True, text=True)


def _one_line_error(out) -> str:
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    return out.stderr


def test_the_issue_case_parquet_of_image_bytes_is_read(tmp_path):
    # 6 rows of image bytes + text, once read as JSONL line by line: 0 samples and exit 0
    src = write_parquet(tmp_path / "caps.parquet", caption_rows(), row_group_size=6)
    stats = preprocess(PreprocessConfig(kind="caption", inputs=[str(src)], output=str(tmp_path / "o"), workers=0),
                       progress=False)
    assert stats["samples"] == 4 and stats["records"] == 6
    named_wrong = tmp_path / "caps.jsonl"
    named_wrong.write_bytes(src.read_bytes())
    assert input_type(named_wrong) == "parquet"  # by content, whatever its name


def test_files_no_reader_takes_are_one_line_errors(tmp_path):
    jpeg = tmp_path / "photo.jpg"
    jpeg.write_bytes(encode(real_images()["coffee"], "JPEG"))
    err = _one_line_error(_tool(tmp_path, "--kind", "caption", "--input", str(jpeg)))
    assert "photo.jpg" in err and "not a format any reader takes" in err
    assert not (tmp_path / "out").exists()  # refused before anything was written
    tar = caption_tar(tmp_path / "web.tar", n=2)
    with pytest.raises(UnreadableInput, match="web.tar: the text reader does not take tar inputs"):
        preprocess(PreprocessConfig(kind="text", inputs=[str(tar)], output=str(tmp_path / "t"), workers=0),
                   progress=False)
    assert not (tmp_path / "t").exists()
    with pytest.raises(UnreadableInput, match="DatasetDict; pass one split's folder \\(train\\)"):
        (tmp_path / "dd" / "train").mkdir(parents=True)
        (tmp_path / "dd" / "dataset_dict.json").write_text("{}")
        (tmp_path / "dd" / "train" / "state.json").write_text("{}")
        input_type(tmp_path / "dd")


def test_an_input_with_every_record_skipped_fails_naming_it(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": "a document"}])
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"body": f"schema {i}"} for i in range(4)])
    err = _one_line_error(_tool(tmp_path, "--kind", "text", "--input", str(good), str(wrong)))
    assert "wrong.jsonl: every one of its 4 records was skipped (commonest reason: missing_field, 4x)" in err
    assert not (tmp_path / "out" / "stats.json").exists()  # a failed job does not look finished


def test_max_skip_share(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "ok.png").write_bytes(encode(real_images()["chelsea"]))
    rows = [{"image": "imgs/ok.png", "caption": "a cat"}, {"image": "imgs/ok.png", "caption": "the cat"},
            {"image": "imgs/gone.png", "caption": "x"}, {"image": "imgs/ok.png", "caption": ""}]
    src = write_jsonl(tmp_path / "caps.jsonl", rows)
    kw = dict(kind="caption", inputs=[str(src)], workers=0)
    with pytest.raises(TooManySkips, match="caps.jsonl: 2 of its 4 records were skipped \\(50% > --max-skip-share "
                                           "0.4; commonest reason: "):
        preprocess(PreprocessConfig(output=str(tmp_path / "a"), max_skip_share=0.4, **kw), progress=False)
    # the same shards with a looser limit: a rerun may change it (it is not part of what the job makes)
    stats = preprocess(PreprocessConfig(output=str(tmp_path / "a"), **kw), progress=False)
    assert stats["samples"] == 2 and stats["resumed_shards"] == 1
    assert stats["inputs"][str(src)] == {"records": 4, "skipped": {"empty_caption": 1, "missing_file": 1}}
    with pytest.raises(UserInputError, match="max_skip_share must be within \\[0, 1\\]"):
        PreprocessConfig(output=str(tmp_path / "b"), max_skip_share=1.5, **kw)
