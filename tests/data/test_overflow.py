"""Samples the packer drops or splits, per dataset, against an independent count from the shards."""

import json

import numpy as np
import pytest
import webdataset as wds

from megatron_solo.config.data import DataConfig, DatasetSource, PreprocessConfig
from megatron_solo.data.dataset import PackedDataset
from megatron_solo.data.overflow import DataLossError, format_overflow_report, largest_fitting_side
from megatron_solo.data.preprocess import preprocess
from megatron_solo.errors import UserInputError
from megatron_solo.vocab import image_token_count
from tests.harness.data_sources import classification_folder, encode, real_images, write_jsonl

L = 64  # below an 8x8 image block (73 tokens): images preprocessed at max_side 256 cannot all fit


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("overflow")
    folder, _ = classification_folder(root / "train")
    common = dict(workers=0, max_side=256, shard_size=4)
    preprocess(PreprocessConfig(kind="classification", inputs=[str(folder)], output=str(root / "img"), **common),
               progress=False)
    docs = [{"text": f"Note {i}: " + "short words " * (2 + i)} for i in range(6)]
    docs.append({"text": "a long document that must be split " * 20})
    txt = write_jsonl(root / "t.jsonl", docs)
    preprocess(PreprocessConfig(kind="text", inputs=[str(txt)], output=str(root / "txt"), **common),
               progress=False)
    big = root / "big" / "n001"
    big.mkdir(parents=True)
    for name in ("astronaut", "camera"):  # 512x512 -> 8x8 at max_side 256
        (big / f"{name}.png").write_bytes(encode(real_images()[name]))
    preprocess(PreprocessConfig(kind="classification", inputs=[str(big.parent)], output=str(root / "bigimg"),
                                **common), progress=False)
    return root


def _stored(folder) -> list[tuple[int, int]]:
    """(tokens, largest image block) of every stored sample, in shard order, read with webdataset."""
    out = []
    for tar in sorted(folder.glob("*.tar")):
        for s in wds.WebDataset(str(tar), shardshuffle=False, empty_check=False):
            segments = json.loads(s["json"])["segments"]
            blocks = [image_token_count(g["rows"], g["cols"]) for g in segments if "image" in g]
            out.append((len(s["tok"]) // 2 + sum(blocks), max(blocks, default=0)))
    return out


def _dataset(root, **kw):
    cfg = DataConfig(datasets=[DatasetSource(str(root / "img"), 1.0, name="imagenet"),
                               DatasetSource(str(root / "txt"), 1.0)], seed=5, weighting="samples", **kw)
    return PackedDataset(cfg, L)


@pytest.mark.parametrize("overflow", ["split", "drop"])
def test_report_matches_an_independent_count(shards, overflow):
    ds = _dataset(shards, overflow=overflow)
    report = ds.overflow_report(0)
    assert list(report) == ["imagenet", str(shards / "txt")]
    plan = ds.plan(0)
    for d, (label, folder) in enumerate([("imagenet", "img"), (str(shards / "txt"), "txt")]):
        stored = _stored(shards / folder)
        drawn = [stored[i] for i in plan.sample[plan.dataset == d]]
        too_long = [(n, b) for n, b in drawn if n > L]
        lost = [(n, b) for n, b in too_long if overflow == "drop" or b > L]
        r = report[label]
        assert r["samples_drawn"] == len(drawn) and r["tokens_drawn"] == sum(n for n, _ in drawn)
        assert r["samples_dropped"] == len(lost) and r["tokens_dropped"] == sum(n for n, _ in lost)
        assert r["samples_split"] == len(too_long) - len(lost)
        assert r["drop_share"] == pytest.approx(r["tokens_dropped"] / r["tokens_drawn"])
        assert r["longest_dropped_sample"] == max((n for n, _ in lost), default=0)
        assert r["largest_dropped_image_block"] == max((b for _, b in lost), default=0)
        assert bool(r["reason"]) == bool(lost)
    assert report["imagenet"]["samples_dropped"] > 0 and report["imagenet"]["largest_dropped_image_block"] == 73
    text = report[str(shards / "txt")]
    assert (text["samples_split"], text["samples_dropped"]) == ((1, 0) if overflow == "split" else (0, 1))
    stats = ds.stats(0)  # the blend-wide packing stats agree with the per-source report
    assert stats["dropped_samples"] == sum(r["samples_dropped"] for r in report.values())
    assert stats["split_samples"] == sum(r["samples_split"] for r in report.values())
    assert len(format_overflow_report(report)) == 2


def test_check_overflow_refuses_with_source_share_reason_and_fix(shards):
    ds = _dataset(shards)
    share = ds.overflow_report()["imagenet"]["drop_share"]
    assert 0.01 < share < 1
    with pytest.raises(DataLossError) as err:
        ds.check_overflow(ds.config.max_drop_share)
    message = str(err.value)
    assert isinstance(err.value, UserInputError) and "\n" not in message
    assert message.startswith("imagenet: the packer drops") and f"{share:.1%}" in message
    assert "image blocks of up to 73 tokens do not fit seq_length 64" in message
    assert "--max-side 224" in message and "--seq-length to at least 73" in message and "max_drop_share" in message
    assert str(shards / "txt") not in message  # the text source loses nothing
    ds.check_overflow(share)  # exactly the share lost is allowed
    ds.check_overflow(1.0)
    dropping = _dataset(shards, overflow="drop")
    with pytest.raises(DataLossError, match=f"{shards / 'txt'}: .*overflow='drop'.*overflow='split'"):
        dropping.check_overflow(0.01)
    with pytest.raises(DataLossError, match="imagenet: .*overflow='drop'.*'split' too: preprocess with --max-side 224"):
        dropping.check_overflow(0.01)


def test_every_sample_dropped_names_the_reason(shards):
    ds = PackedDataset(DataConfig(datasets=[DatasetSource(str(shards / "bigimg"), name="big")]), L)
    assert ds.overflow_report()["big"]["drop_share"] == 1.0
    with pytest.raises(DataLossError, match="no packs.*big: the packer drops 100.0%.*73 tokens"):
        len(ds)


def test_largest_fitting_side_and_config():
    assert largest_fitting_side(1024, 32) == 992  # 31x31 grid: 993 tokens
    assert image_token_count(31, 31) <= 1024 < image_token_count(32, 32)
    assert largest_fitting_side(64, 32) == 224 and largest_fitting_side(2, 32) == 0
    assert DataConfig().max_drop_share == 0.01
    with pytest.raises(UserInputError, match="max_drop_share"):
        DataConfig(max_drop_share=1.5)
    assert np.isclose(DataConfig(max_drop_share=0).max_drop_share, 0)
