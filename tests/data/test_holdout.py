"""The deterministic held-out split: the rule against a reference, exact counts, strata, resume, workers."""

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from megatron_solo.config.data import DataConfig, DatasetSource, PreprocessConfig
from megatron_solo.data import holdout as ho
from megatron_solo.data.dataset import PackedDataset
from megatron_solo.data.packing import _splitmix64, seed_state
from megatron_solo.data.preprocess import preprocess
from megatron_solo.data.shards import index_path, load_index
from megatron_solo.data.sources import classification_records
from megatron_solo.errors import UserInputError
from tests.harness.data_sources import encode, write_jsonl
from tests.harness.paths import TOOLS

TOOL = TOOLS / "preprocess_data.py"


def _ref_hash(p: int, seed: int) -> int:
    """The documented rule through the packer's pure-Python generator."""
    return _splitmix64(seed_state(seed ^ ho.SALT, p))[1]


def _ref_choose(positions, labels, amount, seed):
    """Largest-remainder quotas in exact fractions, then the smallest (hash, position) of each label."""
    n = len(positions)
    total = int(amount) if amount >= 1 else round(amount * n)
    names = sorted(set(labels))
    sizes = [labels.count(name) for name in names]
    shares = [Fraction(total * s, n) for s in sizes]
    quota = [int(x) for x in shares]
    by_remainder = sorted(range(len(names)), key=lambda i: (-(shares[i] - quota[i]), _ref_hash(i, seed + 1)))
    for i in by_remainder[: total - sum(quota)]:
        quota[i] += 1
    held = []
    for i, name in enumerate(names):
        mine = sorted((_ref_hash(p, seed), p) for p, lab in zip(positions, labels) if lab == name)
        held += [p for _, p in mine[: quota[i]]]
    return sorted(held)


def test_position_hash_is_the_packers_generator():
    positions = np.array([0, 1, 2, 999, 10**9, 2**40])
    for seed in (0, 7, 1234, 2**63 + 5):
        got = ho.position_hashes(positions, seed)
        assert got.dtype == np.uint64
        assert [int(h) for h in got] == [_ref_hash(int(p), seed) for p in positions]


@pytest.mark.parametrize("amount", [7, 0.3, 1, 0.01])
def test_choice_matches_reference(amount):
    rng = np.random.default_rng(0)
    positions = sorted(rng.choice(400, 97, replace=False).tolist())
    labels = rng.choice(["cat", "dog", "eel", "owl"], len(positions), p=[0.5, 0.3, 0.15, 0.05]).tolist()
    number = {name: i for i, name in enumerate(sorted(set(labels)))}
    got = ho.choose(np.array(positions), np.array([number[lab] for lab in labels]), amount, seed=11)
    assert got.tolist() == _ref_choose(positions, labels, amount, 11)
    expected = int(amount) if amount >= 1 else round(amount * len(positions))
    assert len(got) == expected
    unlabelled = ho.choose(np.array(positions), np.zeros(len(positions), np.int64), amount, seed=11)
    assert unlabelled.tolist() == _ref_choose(positions, [""] * len(positions), amount, 11)
    assert ho.choose(np.array(positions), np.zeros(len(positions)), amount, seed=12).tolist() != unlabelled.tolist()


def test_bad_amounts_refused():
    with pytest.raises(UserInputError, match="only 5 records"):
        ho.choose(np.arange(5), np.zeros(5), 6, seed=0)
    for bad in (2.5, -1, float("nan")):
        with pytest.raises(UserInputError, match="holdout"):
            PreprocessConfig(kind="text", inputs=[], output="x", holdout=bad)


def test_a_split_that_holds_out_nothing_or_everything_is_refused(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"document {i}"} for i in range(15)])
    for amount, words in ((0.01, "holds out no record of 15"), (15, "leaves none to train on")):
        with pytest.raises(UserInputError, match=words):
            _run(tmp_path / "out", src, holdout=amount)
        assert not (tmp_path / "out").exists()  # a refused run leaves nothing behind


def _keys(folder: Path) -> list[int]:
    return [int(k) for tar in sorted(folder.glob("*.tar")) for k in load_index(tar).keys.tolist()]


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


@pytest.fixture(scope="module")
def text_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("holdout_text")
    rows = [{"text": f"document number {i}: " + "words " * (i % 7 + 1)} for i in range(50)]
    rows[10] = "{broken json"  # a skip found while reading is never a held-out candidate
    return write_jsonl(root / "docs.jsonl", rows)


def _run(out: Path, src, **kw):
    cfg = PreprocessConfig(kind="text", inputs=[str(src)], output=str(out), shard_size=4,
                           **{"workers": 0, "holdout": 7, **kw})
    return preprocess(cfg, progress=False)


def test_split_is_exact_disjoint_complete_and_stable(text_source, tmp_path):
    stats = _run(tmp_path / "a", text_source)
    train, held = _keys(tmp_path / "a"), _keys(tmp_path / "a" / "heldout")
    assert len(held) == 7 and len(train) == 42 and not set(train) & set(held)
    assert sorted(train + held + [10]) == list(range(50))
    candidates = [p for p in range(50) if p != 10]
    assert held == _ref_choose(candidates, [""] * len(candidates), 7, 1234)
    assert stats["samples"] == 42 and stats["heldout"]["samples"] == 7 and stats["skipped"] == {"bad_json": 1}
    assert stats["holdout"]["records"] == 7 and stats["holdout"]["candidates"] == 49
    saved = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert saved["heldout"]["samples"] == 7
    assert json.loads((tmp_path / "a" / "heldout" / "stats.json").read_text())["samples"] == 7
    # the same split on another run, and with worker processes
    _run(tmp_path / "b", text_source, workers=2)
    for part in ("", "heldout"):
        assert _bytes(tmp_path / "a" / part) == _bytes(tmp_path / "b" / part)
    _run(tmp_path / "c", text_source, holdout_seed=5)
    assert len(_keys(tmp_path / "c" / "heldout")) == 7 and _keys(tmp_path / "c" / "heldout") != held
    # fraction: round(0.25 x 49) = 12
    _run(tmp_path / "f", text_source, holdout=0.25)
    assert len(_keys(tmp_path / "f" / "heldout")) == 12


def test_resume_redoes_only_missing_shards_of_both_parts(text_source, tmp_path):
    out = tmp_path / "r"
    _run(out, text_source)
    before = {part: _bytes(out / part) for part in ("", "heldout")}
    index_path(sorted(out.glob("*.tar"))[3]).unlink()
    index_path(sorted((out / "heldout").glob("*.tar"))[1]).unlink()
    (out / "heldout" / "shard-000001.tar.tmp").write_bytes(b"partial")
    again = _run(out, text_source)
    n_shards = len(before[""]) + len(before["heldout"])
    assert again["resumed_shards"] == n_shards - 2 and again["heldout"]["samples"] == 7
    assert {part: _bytes(out / part) for part in ("", "heldout")} == before
    assert not list((out / "heldout").glob("*.tmp*"))
    with pytest.raises(UserInputError, match="different preprocessing job.*holdout"):
        _run(out, text_source, holdout=8)


def test_heldout_folder_is_a_dataset(text_source, tmp_path):
    _run(tmp_path / "d", text_source)
    ds = PackedDataset(DataConfig(datasets=[DatasetSource(str(tmp_path / "d" / "heldout"))]), 128)
    assert ds.overflow_report()[str(tmp_path / "d" / "heldout")]["samples_drawn"] == 7
    assert int((ds[0]["tokens"] == 1).sum()) >= 1  # documents start with <s>


def test_classification_holdout_is_stratified(tmp_path):
    photo = Image.fromarray(skdata.astronaut())
    root = tmp_path / "train"
    sizes = {"n001": 10, "n002": 6, "n003": 4}
    for label, count in sizes.items():
        (root / label).mkdir(parents=True)
        for i in range(count):
            crop = photo.crop((i * 20, i * 10, i * 20 + 64, i * 10 + 48))
            (root / label / f"{label}_{i}.png").write_bytes(encode(crop))
    stats = preprocess(PreprocessConfig(kind="classification", inputs=[str(root)], output=str(tmp_path / "o"),
                                        workers=0, shard_size=3, holdout=0.25), progress=False)
    label_of = [r["label"] for r in classification_records([str(root)])]
    held = _keys(tmp_path / "o" / "heldout")
    per_label = {label: sum(label_of[p] == label for p in held) for label in sizes}
    assert per_label == {"n001": 2, "n002": 2, "n003": 1}  # 5 of 20: shares 2.5, 1.5, 1.0; the tie for the fifth goes by hash
    assert held == _ref_choose(list(range(20)), label_of, 0.25, 1234)
    assert stats["holdout"]["stratified_by_label"] and stats["heldout"]["samples"] == 5 and stats["samples"] == 15


def test_cli_holdout(text_source, tmp_path):
    out = subprocess.run([sys.executable, str(TOOL), "--kind", "text", "--input", str(text_source), "--output",
                          str(tmp_path / "o"), "--workers", "0", "--quiet", "--holdout", "3"],
                         capture_output=True, text=True, check=True)
    stats = json.loads(out.stdout)
    assert stats["heldout"]["samples"] == 3 and stats["samples"] == 46
    bad = subprocess.run([sys.executable, str(TOOL), "--kind", "text", "--input", str(text_source), "--output",
                          str(tmp_path / "p"), "--workers", "0", "--quiet", "--holdout", "500"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "only 49 records" in bad.stderr and "Traceback" not in bad.stderr
