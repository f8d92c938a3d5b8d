"""Packing (C++ vs pure-Python reference), overflow handling, blending, and the tar indexer."""

import io
import tarfile

import numpy as np
import pytest

from megatron_solo import _csrc
from megatron_solo.data import packing as pk


def _random_case(rng, n, seq_length, with_blocks=True):
    lengths = rng.integers(1, seq_length * 2, n)
    lengths[rng.random(n) < 0.7] //= 8  # mostly short, some over-long
    lengths = np.maximum(lengths, 1)
    ptr, starts, ends = [0], [], []
    for length in lengths:
        pos = int(rng.integers(0, 4))
        while with_blocks and pos < length - 4 and rng.random() < 0.6:
            start = pos + int(rng.integers(0, max(1, length // 4)))
            longest = seq_length + 50 if rng.random() < 0.05 else max(4, seq_length // 3)  # some unsplittable
            end = min(int(length), start + int(rng.integers(3, longest)))
            if start >= end:
                break
            starts.append(start)
            ends.append(end)
            pos = end + 1
        ptr.append(len(starts))
    return lengths.astype(np.int64), np.array(ptr), np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)


def _assert_same(a: pk.PackResult, b: pk.PackResult):
    for name in ("pack_ptr", "item_sample", "item_start", "item_end", "dropped"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.num_split, a.dropped_tokens) == (b.num_split, b.dropped_tokens)


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("overflow", ["split", "drop"])
@pytest.mark.parametrize("open_bins", [1, 4, 64])
def test_cpp_matches_reference(seed, overflow, open_bins):
    rng = np.random.default_rng(seed)
    lengths, ptr, starts, ends = _random_case(rng, 400, 256)
    kw = dict(block_ptr=ptr, block_start=starts, block_end=ends, overflow=overflow, open_bins=open_bins)
    for epoch in (0, 3):
        ref = pk.pack_reference(lengths, 256, seed, epoch, **kw)
        fast = pk.pack(lengths, 256, seed, epoch, **kw)
        _assert_same(ref, fast)
        _check_invariants(fast, lengths, ptr, starts, ends, 256, overflow)
        assert fast.num_split > 0 or overflow == "drop"


def _check_invariants(res, lengths, ptr, starts, ends, seq_length, overflow):
    assert (res.pack_lengths() <= seq_length).all() and (res.pack_lengths() > 0).all()
    covered = {}
    for k in range(len(res.item_sample)):
        s, a, b = int(res.item_sample[k]), int(res.item_start[k]), int(res.item_end[k])
        covered.setdefault(s, []).append((a, b))
        for bs, be in zip(starts[ptr[s]:ptr[s + 1]], ends[ptr[s]:ptr[s + 1]]):
            assert not (bs < a < be) and not (bs < b < be), "cut inside an image block"
    dropped = set(res.dropped.tolist())
    assert not dropped & covered.keys()
    for s in range(len(lengths)):  # every token of every kept sample appears exactly once: no truncation
        if s in dropped:
            assert overflow == "drop" or lengths[s] > seq_length
            continue
        pieces = sorted(covered[s])
        assert pieces[0][0] == 0 and pieces[-1][1] == lengths[s]
        assert all(p[1] == q[0] for p, q in zip(pieces, pieces[1:]))
    assert res.dropped_tokens == int(lengths[list(dropped)].sum()) if dropped else res.dropped_tokens == 0


def test_deterministic_and_epoch_dependent():
    lengths = np.random.default_rng(0).integers(1, 500, 2000)
    a = pk.pack(lengths, 1024, seed=5, epoch=0)
    _assert_same(a, pk.pack(lengths, 1024, seed=5, epoch=0))
    b = pk.pack(lengths, 1024, seed=5, epoch=1)
    assert not np.array_equal(a.item_sample, b.item_sample)


def test_shuffle_matches_reference():
    for n in (0, 1, 2, 1000):
        assert pk.shuffled_order(n, 42, 3).tolist() == pk.shuffled_order_reference(n, 42, 3)
    assert sorted(pk.shuffled_order(1000, 1, 0).tolist()) == list(range(1000))


def test_text_longer_than_L_is_split_or_dropped_and_counted():
    lengths = np.array([10, 2500, 30])
    # sample 1 has an image block over tokens [900, 1400): a cut at 1000 must move back to 900
    ptr, starts, ends = np.array([0, 0, 1, 1]), np.array([900]), np.array([1400])
    res = pk.pack(lengths, 1000, 0, block_ptr=ptr, block_start=starts, block_end=ends, shuffle=False)
    pieces = sorted((a, b) for s, a, b in zip(res.item_sample, res.item_start, res.item_end) if s == 1)
    assert pieces == [(0, 900), (900, 1900), (1900, 2500)]
    assert res.num_split == 1 and len(res.dropped) == 0
    dropped = pk.pack(lengths, 1000, 0, overflow="drop", shuffle=False)
    assert dropped.dropped.tolist() == [1] and dropped.dropped_tokens == 2500
    # an image longer than L cannot be split: dropped and counted even with the split policy
    res = pk.pack(np.array([5000]), 1000, 0, block_ptr=np.array([0, 1]), block_start=np.array([10]),
                  block_end=np.array([1200]))
    assert res.dropped.tolist() == [0] and res.num_packs == 0


def test_best_fit_fills_gaps():
    res = pk.pack(np.array([700, 600, 300, 400]), 1000, 0, shuffle=False)
    assert sorted(res.pack_lengths().tolist()) == [1000, 1000]
    assert res.fill() == 1.0


def test_bad_inputs():
    with pytest.raises(ValueError):
        pk.pack(np.array([3, 0]), 10, 0)
    with pytest.raises(ValueError):
        pk.pack(np.array([3]), 10, 0, overflow="truncate")
    with pytest.raises(ValueError):
        pk.pack(np.array([3]), 10, 0, block_ptr=np.array([0]), block_start=np.array([]), block_end=np.array([]))


def test_blending_matches_reference():
    weights = [0.7, 0.2, 0.1]
    ref = pk.blend_indices_reference(weights, 5000)
    fast = pk.blend_indices(weights, 5000)
    np.testing.assert_array_equal(ref[0], fast[0])
    np.testing.assert_array_equal(ref[1], fast[1])
    counts = np.bincount(fast[0], minlength=3) / 5000
    assert np.allclose(counts, weights, atol=1e-3)
    with pytest.raises(ValueError):
        pk.blend_indices([1.0, 0.0], 10)


def _make_tar(path, members):
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))


def test_tar_index_matches_tarfile(tmp_path):
    path = tmp_path / "a.tar"
    members = [(f"k{i:03d}.{ext}", bytes([i]) * (i * 97)) for i in range(20) for ext in ("json", "jpg")]
    members.append(("long/" + "x" * 150 + ".txt", b"long name"))
    _make_tar(path, members)
    ours = _csrc.index_tar(str(path))
    with tarfile.open(path) as tf:
        theirs = [(m.name, m.offset, m.offset_data, m.size) for m in tf.getmembers() if m.isfile()]
    assert [o[0] for o in ours] == [t[0] for t in theirs]
    assert [(o[2], o[3]) for o in ours] == [(t[2], t[3]) for t in theirs]
    raw = path.read_bytes()
    for name, _, data_at, size in ours:
        assert raw[data_at:data_at + size] == dict(members)[name]


def test_tar_index_truncated_and_corrupt(tmp_path):
    path = tmp_path / "t.tar"
    _make_tar(path, [("a.bin", b"x" * 5000), ("b.bin", b"y" * 5000)])
    raw = path.read_bytes()
    (tmp_path / "cut.tar").write_bytes(raw[:3000])
    with pytest.raises(ValueError, match="cut.tar.*truncated"):
        _csrc.index_tar(str(tmp_path / "cut.tar"))
    bad = bytearray(raw)
    bad[100:108] = b"garbage!"
    (tmp_path / "bad.tar").write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="bad.tar"):
        _csrc.index_tar(str(tmp_path / "bad.tar"))
    with pytest.raises(ValueError, match="missing.tar"):
        _csrc.index_tar(str(tmp_path / "missing.tar"))
