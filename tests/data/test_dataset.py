"""The packed dataset: exact keys, stream semantics, patches, determinism, DP sharding, resume."""

import io
import json
import shutil

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from megatron_solo.config.data import DataConfig, DatasetSource, PreprocessConfig
from megatron_solo.data.dataset import PackedDataset, collate_packs, patch_positions
from megatron_solo.data.image import image_to_patches
from megatron_solo.data.loader import PackedDataLoader
from megatron_solo.data.preprocess import preprocess
from megatron_solo.data.shards import ShardError
from megatron_solo.vocab import SoloTokenizer
from tests.harness.data_sources import classification_folder, write_jsonl

L = 512
KEYS = {"tokens", "labels", "loss_mask", "position_ids", "patches", "cu_seqlens", "num_patches"}


@pytest.fixture(scope="module")
def tok():
    return SoloTokenizer()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("blend")
    folder, names = classification_folder(root / "train")
    common = dict(workers=0, max_side=128, shard_size=3)
    preprocess(PreprocessConfig(kind="classification", inputs=[str(folder)], output=str(root / "img"),
                                class_names=None, **common), progress=False)
    docs = [{"text": f"Document {i}. " + "lorem ipsum dolor " * (5 + 20 * i)} for i in range(8)]
    docs.append({"text": "a very long document " * 300})  # longer than L: split at text boundaries
    txt = write_jsonl(root / "t.jsonl", docs)
    preprocess(PreprocessConfig(kind="text", inputs=[str(txt)], output=str(root / "txt"), **common),
               progress=False)
    img = root / "train" / "n001" / "astronaut.jpg"
    conv = root / "c.json"
    conv.write_text(json.dumps([{"image": str(img), "conversations": [
        {"from": "human", "value": f"<image>\nQuestion {i}?"}, {"from": "gpt", "value": f"Answer {i}."},
        {"from": "human", "value": "More?"}, {"from": "gpt", "value": "No."}]} for i in range(4)]))
    preprocess(PreprocessConfig(kind="conversation", inputs=[str(conv)], output=str(root / "sft"), **common),
               progress=False)
    return root


def _config(root, **kw):
    datasets = [DatasetSource(str(root / "img"), 0.4), DatasetSource(str(root / "txt"), 0.4),
                DatasetSource(str(root / "sft"), 0.2)]
    base = {"seed": 3, "weighting": "samples", "samples_per_epoch": 40}
    return DataConfig(datasets=datasets, **{**base, **kw})


def _dataset(root, patch_size=32, **kw):
    return PackedDataset(_config(root, **kw), L, patch_size)


def test_pack_keys_and_semantics(shards, tok):
    ds = _dataset(shards)
    assert len(ds) > 3
    sft_answers = []
    for g in range(len(ds)):
        item = ds[g]
        assert set(item) == KEYS
        tokens, labels, mask, pos = item["tokens"], item["labels"], item["loss_mask"], item["position_ids"]
        assert tokens.dtype == labels.dtype == pos.dtype == torch.int64 and tokens.shape == (L,)
        assert mask.dtype == torch.float32 and item["cu_seqlens"].dtype == torch.int32
        assert item["patches"].dtype == torch.float32 and item["patches"].shape[1] == 3072
        assert torch.equal(labels[:-1], tokens[1:]) and mask[-1] == 0
        cu = item["cu_seqlens"].tolist()
        assert cu[0] == 0 and cu[-1] == L and all(a < b for a, b in zip(cu, cu[1:]))
        for a, b in zip(cu, cu[1:]):
            assert torch.equal(pos[a:b], torch.arange(b - a))  # positions restart per document
            assert mask[b - 1] == 0  # never predict across a boundary
        assert ((labels >= 32000) & (labels <= 32004) & (mask > 0)).sum() == 0  # no loss on vision tokens
        assert (tokens == 32001).sum() == item["num_patches"] == item["patches"].shape[0]
        for a, b in zip(cu, cu[1:]):
            doc = tokens[a:b].tolist()
            if doc[0] == 32000 and "[INST]" in tok.decode(doc):  # an SFT document
                trained = [t for t, m in zip(labels[a:b].tolist(), mask[a:b].tolist()) if m]
                sft_answers.append(tok.decode(trained))
    assert sft_answers and all(a.startswith("Answer") and a.endswith("No.</s>") for a in sft_answers)


def test_every_token_packed_once_and_long_text_split(shards):
    ds = _dataset(shards)
    stats = ds.stats(0)
    assert stats["split_samples"] >= 1 and stats["dropped_samples"] == 0
    drawn = ds.plan(0)
    expected = sum(int(ds.sets[d].lengths[i]) for d, i in zip(drawn.dataset, drawn.sample))
    assert stats["tokens"] == expected
    dropped = _dataset(shards, overflow="drop").stats(0)
    assert dropped["dropped_samples"] >= 1 and dropped["dropped_tokens"] > L


def test_patches_match_stored_images(shards):
    ds = _dataset(shards)
    stored = []
    for tar in sorted((shards / "img").glob("*.tar")):
        for s in wds.WebDataset(str(tar), shardshuffle=False, empty_check=False):
            stored.append(image_to_patches(Image.open(io.BytesIO(s["0.jpg"])))[0])
    found = 0
    for g in range(len(ds)):
        patches = ds[g]["patches"]
        for ref in stored:  # each stored image appears as a contiguous run of the pack's patches
            for start in range(0, patches.shape[0] - ref.shape[0] + 1):
                if torch.equal(patches[start:start + ref.shape[0]], ref):
                    found += 1
                    break
    assert found >= len(stored)


def test_deterministic_and_seed_dependent(shards):
    a, b = _dataset(shards), _dataset(shards)
    for g in (0, 2, len(a) + 1):  # also a pack of epoch 1
        assert torch.equal(a[g]["tokens"], b[g]["tokens"])
    c = _dataset(shards, seed=4)
    assert any(not torch.equal(a[g]["tokens"], c[g]["tokens"]) for g in range(3))
    assert not np.array_equal(a.plan(0).sample, a.plan(1).sample)  # epochs differ


def test_collate_offsets(shards):
    ds = _dataset(shards)
    items = [ds[0], ds[1]]
    batch = collate_packs(items)
    assert batch["tokens"].shape == (2, L) and batch["loss_mask"].shape == (2, L)
    assert torch.equal(batch["patches"], torch.cat([items[0]["patches"], items[1]["patches"]]))
    cu0, cu1 = items[0]["cu_seqlens"], items[1]["cu_seqlens"]
    assert torch.equal(batch["cu_seqlens"], torch.cat([cu0, cu1[1:] + L]))
    assert batch["num_patches"].tolist() == [items[0]["num_patches"], items[1]["num_patches"]]
    assert int(batch["num_patches"].sum()) == batch["patches"].shape[0]
    assert torch.equal(patch_positions(batch["tokens"]), torch.nonzero(batch["tokens"].reshape(-1) == 32001)[:, 0])
    assert patch_positions(batch["tokens"]).numel() == batch["patches"].shape[0]


def _take(loader, n):
    out = []
    for batch in loader:
        out.append(batch["tokens"].clone())
        if len(out) == n:
            break
    return out


def test_dp_sharding_covers_global_sequence(shards):
    ds = _dataset(shards)
    single = _take(PackedDataLoader(ds, micro_batch_size=1, num_workers=0), 8)
    r0 = _take(PackedDataLoader(ds, micro_batch_size=2, rank=0, world_size=2, num_workers=0), 2)
    r1 = _take(PackedDataLoader(ds, micro_batch_size=2, rank=1, world_size=2, num_workers=0), 2)
    merged = [r0[0][0], r0[0][1], r1[0][0], r1[0][1], r0[1][0], r0[1][1], r1[1][0], r1[1][1]]
    assert all(torch.equal(a[0], b) for a, b in zip(single, merged))


def test_resume_sees_the_same_packs(shards):
    ds = _dataset(shards)
    n_epoch = len(ds)
    ref = _take(PackedDataLoader(ds, micro_batch_size=2, num_workers=2), n_epoch)  # crosses into epoch 1
    loader = PackedDataLoader(_dataset(shards), micro_batch_size=2, num_workers=2)
    _take(loader, 3)
    state = loader.state_dict()
    assert state["consumed_packs"] == 6
    resumed = PackedDataLoader(_dataset(shards), micro_batch_size=2, num_workers=2)
    resumed.load_state_dict(state)
    rest = _take(resumed, n_epoch - 3)
    assert all(torch.equal(a, b) for a, b in zip(ref[3:], rest))
    with pytest.raises(ValueError, match="differs"):
        PackedDataLoader(_dataset(shards, seed=9)).load_state_dict(state)


def test_shard_mismatch_is_a_clear_error(shards, tmp_path):
    bad = tmp_path / "img"
    shutil.copytree(shards / "img", bad)
    tars = sorted(bad.glob("*.tar"))
    shutil.copyfile(tars[1], tars[0])
    with pytest.raises(ShardError, match="shard-000000.tar"):
        PackedDataset(DataConfig(datasets=[DatasetSource(str(bad))]), L)


def test_patch_size_mismatch_refused(shards):
    with pytest.raises(ShardError, match="16-pixel|32-pixel"):
        _dataset(shards, patch_size=16)


def test_a_training_loader_on_a_gpu_pins_its_batches(shards, monkeypatch):
    """Page-locked batches, so the step's non-blocking copy to the GPU does not wait; none on the CPU."""
    from megatron_solo.config import TrainConfig
    from megatron_solo.training.startup import build_checked_loader

    asked = []

    class Spy(torch.utils.data.DataLoader):
        def __init__(self, *args, pin_memory=False, **kwargs):
            asked.append(pin_memory)
            super().__init__(*args, **kwargs)  # this CPU has nothing to pin into

    monkeypatch.setattr(torch.utils.data, "DataLoader", Spy)
    train = TrainConfig(seq_length=L, micro_batch_size=1)
    for gpu in (False, True):
        monkeypatch.setattr("megatron_solo.platform.distributed.uses_cuda", lambda gpu=gpu: gpu)
        next(iter(build_checked_loader(_config(shards, num_workers=0), train, 32, 0, 1, "data")))
    assert asked == [False, True]
