"""Checkpoint save/load in a one-process world: our state without pickle, stale partial folders, and
checkpoints independent of the layer implementation (Transformer Engine's ``_extra_state``)."""

from __future__ import annotations

import json

import pytest
import torch

from megatron_solo.checkpoint import CheckpointError
from megatron_solo.checkpoint.layout import resolve_checkpoint
from megatron_solo.checkpoint.optimizer_state import prime_optimizer_state
from megatron_solo.checkpoint.state import (
    TrainState,
    load_checkpoint,
    save_checkpoint,
)
from megatron_solo.checkpoint.train_state import DataPosition, SavedLayout, read_train_state
from megatron_solo.config import ParallelConfig, TrainConfig
from megatron_solo.config.train import OptimConfig
from megatron_solo.model.builder import solo_provider
from megatron_solo.model.chunks import build_model_chunks
from megatron_solo.platform import init_parallel
from tests.harness import solo_batches as SB


def _chunks(seed: int) -> list[torch.nn.Module]:
    init_parallel(ParallelConfig(), seed=seed)
    torch.manual_seed(seed)
    return build_model_chunks(solo_provider(SB.tiny_solo_config(), ParallelConfig()), ParallelConfig())


def _weights(chunk) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in chunk.state_dict().items() if torch.is_tensor(v)}


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- no pickle for our state
def test_train_state_is_json_and_rng_states_are_tensors(world1, tmp_path, monkeypatch):
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    from megatron_solo.training.ddp import wrap_ddp
    from megatron_solo.training.optimizer import build_optimizer, build_scheduler

    parallel = ParallelConfig()
    chunks = wrap_ddp(_chunks(3), parallel)
    train = TrainConfig(micro_batch_size=1, global_batch_size=1, seq_length=32, train_steps=10, bf16=False,
                        optim=OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=2))
    optimizer = build_optimizer(chunks, train, parallel)
    prime_optimizer_state(optimizer)  # Adam's state exists once it stepped
    scheduler = build_scheduler(optimizer, train)
    scheduler.step(3)
    torch.rand(7)  # move the generators off their seeds
    rng = (torch.get_rng_state(), {k: v.clone() for k, v in get_cuda_rng_tracker().get_states().items()})
    data = DataPosition(consumed_packs=12, fingerprint="abc123", micro_batch_size=1, world_size=1)
    ckpt = save_checkpoint(str(tmp_path), TrainState(iteration=4, consumed_samples=48, data=data, skipped_steps=1,
                                                     skipped_data=[[4, 8]], spike_history=[2.5, 2.25]),
                           chunks, optimizer, scheduler)

    saved = json.loads((tmp_path / "iter_0000004" / "solo_train_state.json").read_text())
    assert saved["iteration"] == 4 and saved["consumed_samples"] == 48 and saved["version"] == 2
    assert saved["data"] == {"consumed_packs": 12, "fingerprint": "abc123", "micro_batch_size": 1, "world_size": 1}
    assert saved["layout"] == {"pipeline_parallel": 1, "tensor_parallel": 1, "data_parallel": 1}
    assert saved["scheduler"] == scheduler.state_dict()
    assert read_train_state(ckpt).to_json() == saved
    assert "train_state" not in torch.load(tmp_path / "iter_0000004" / "common.pt", weights_only=True)
    entries = FileSystemReader(ckpt).read_metadata().state_dict_metadata
    assert not [k for k, v in entries.items() if k.startswith("rng_state") and isinstance(v, BytesStorageMetadata)]
    assert {"rng_state/cpu", "rng_state/tracker/model-parallel-rng"} <= set(entries)

    # Loading unpickles none of what we wrote (nor the local layers' empty _extra_state objects).
    unpickled = []
    real_load = torch.load

    def spy(*args, **kwargs):
        if kwargs.get("weights_only") is False:
            unpickled.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    torch.rand(5)
    fresh = wrap_ddp(_chunks(4), parallel)
    optimizer2 = build_optimizer(fresh, train, parallel)
    scheduler2 = build_scheduler(optimizer2, train)
    state = load_checkpoint(str(tmp_path), fresh, optimizer2, scheduler2)
    assert unpickled == []
    assert (state.iteration, state.consumed_samples, state.data) == (4, 48, data)
    assert (state.skipped_steps, state.skipped_data, state.spike_history) == (1, [[4, 8]], [2.5, 2.25])
    assert scheduler2.num_steps == 3
    assert torch.equal(torch.get_rng_state(), rng[0])
    tracker = get_cuda_rng_tracker().get_states()
    assert tracker.keys() == rng[1].keys() and all(torch.equal(tracker[k], rng[1][k]) for k in tracker)
    _assert_same_weights(_weights(fresh[0].module), _weights(chunks[0].module))


def test_a_version_1_train_state_reads_as_the_typed_state(tmp_path):
    data = {"consumed_packs": 8, "fingerprint": "f00d", "micro_batch_size": 1, "world_size": 2}
    (tmp_path / "solo_train_state.json").write_text(json.dumps(
        {"iteration": 3, "consumed_samples": 12, "extra": {"data": data}, "layout": [1, 2, 1], "scheduler": None}))
    state = read_train_state(tmp_path)
    assert (state.iteration, state.consumed_samples, state.data) == (3, 12, DataPosition(**data))
    assert state.layout == SavedLayout(pipeline_parallel=1, tensor_parallel=2, data_parallel=1)
    assert (state.version, state.skipped_steps, state.skipped_data) == (2, 0, [])


def test_a_newer_or_unknown_train_state_is_refused_naming_the_field(tmp_path):
    path = tmp_path / "solo_train_state.json"
    path.write_text(json.dumps({"iteration": 3, "version": 9}))
    with pytest.raises(CheckpointError, match=r"solo_train_state\.json: field version = 9"):
        read_train_state(tmp_path)
    path.write_text(json.dumps({"iteration": 3, "version": 2, "colour": "blue"}))
    with pytest.raises(CheckpointError, match=r"unknown field\(s\) \['colour'\]"):
        read_train_state(tmp_path)


def test_train_state_file_errors_name_the_file(tmp_path):
    (tmp_path / "solo_train_state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"solo_train_state\.json: not valid JSON"):
        read_train_state(tmp_path)
    (tmp_path / "solo_train_state.json").unlink()
    with pytest.raises(CheckpointError, match="no solo_train_state.json"):
        read_train_state(tmp_path)


# ----------------------------------------------------------------------------- unfinished saves
def test_newer_checkpoint_removes_older_partial_folders_of_saves_only(world1, tmp_path):
    from megatron_solo.checkpoint.layout import PARTIAL_MARKER

    chunks = _chunks(5)
    names = ("iter_0000001.partial", "iter_0000009.partial", "iter_0000001.partial.mine", "notes.partial",
             "iter_0000003.partial")
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "x").write_text("x")
    for name in names[:3]:  # as a save leaves its folder
        (tmp_path / name / PARTIAL_MARKER).touch()
    (tmp_path / "iter_0000002.partial").write_text("a file, not a folder of ours")
    save_checkpoint(str(tmp_path), TrainState(iteration=5), chunks)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "iter_0000001.partial" not in left  # killed mid-save, older than the checkpoint now complete
    assert {"iter_0000009.partial", "iter_0000001.partial.mine", "notes.partial", "iter_0000002.partial",
            "iter_0000003.partial", "iter_0000005", "latest_checkpointed_iteration.txt"} <= set(left)
    assert (tmp_path / "iter_0000003.partial" / "x").read_text() == "x"  # a user's folder of that name: kept
    assert resolve_checkpoint(tmp_path)[1] == tmp_path / "iter_0000005"
    assert not (tmp_path / "iter_0000005" / PARTIAL_MARKER).exists()
    (tmp_path / "iter_0000006.partial").mkdir()  # a user's folder where the next save would write
    with pytest.raises(CheckpointError, match="iter_0000006.partial: in the way of this run's checkpoint"):
        save_checkpoint(str(tmp_path), TrainState(iteration=6), chunks)
    assert (tmp_path / "iter_0000006.partial").is_dir()


@pytest.mark.parametrize("suffix", ["", "/", "//", "/."])
def test_partial_folder_is_refused_however_written(tmp_path, suffix):
    (tmp_path / "iter_0000009.partial").mkdir()
    (tmp_path / "iter_0000009.partial" / "metadata.json").write_text("{}")  # looks like a checkpoint
    path = f"{tmp_path}/iter_0000009.partial{suffix}"
    with pytest.raises(CheckpointError, match="an unfinished checkpoint"):
        resolve_checkpoint(path)
    with pytest.raises(CheckpointError, match="an unfinished checkpoint"):  # --init-from and resume go here
        load_checkpoint(path, [])


# ----------------------------------------------------------------------------- TE / local _extra_state
class FakeFP8Meta(torch.nn.Module):
    """A module with non-tensor extra state, as Transformer Engine's layers carry FP8 scaling metadata."""

    def __init__(self, value: float | None = None):
        super().__init__()
        self.value = value
        self.restored = "never"

    def get_extra_state(self):
        """The FP8 metadata (a dict of tensors, like TE's)."""
        return {"scale": torch.full((2,), float(self.value or 0.0))}

    def set_extra_state(self, state):
        """Record what the checkpoint gave back."""
        self.restored = state


def _with_fp8_meta(chunk, value=None) -> list[FakeFP8Meta]:
    metas = []
    for layer in chunk.decoder.layers:
        layer.self_attention.fp8_meta = FakeFP8Meta(value)
        metas.append(layer.self_attention.fp8_meta)
    return metas


def test_extra_state_missing_from_checkpoint_starts_fresh(world1, tmp_path, capsys):
    local = _chunks(6)
    save_checkpoint(str(tmp_path / "local"), TrainState(iteration=1), local)
    te_like = _chunks(7)
    metas = _with_fp8_meta(te_like[0])
    assert any(k.endswith("fp8_meta._extra_state") for k in te_like[0].sharded_state_dict())
    load_checkpoint(str(tmp_path / "local"), te_like)
    _assert_same_weights(_weights(te_like[0]), _weights(local[0]))
    assert all(m.restored == "never" for m in metas)
    assert capsys.readouterr().out.count("note: FP8 metadata not in checkpoint: starting fresh") == 1


def test_extra_state_in_checkpoint_is_kept_and_ignored_by_local_models(world1, tmp_path):
    te_like = _chunks(8)
    _with_fp8_meta(te_like[0], value=3.5)
    save_checkpoint(str(tmp_path / "te"), TrainState(iteration=1), te_like)
    again = _chunks(9)
    metas = _with_fp8_meta(again[0])
    load_checkpoint(str(tmp_path / "te"), again)
    for meta in metas:
        assert torch.equal(meta.restored["scale"], torch.full((2,), 3.5))
    local = _chunks(10)
    load_checkpoint(str(tmp_path / "te"), local)  # the extra objects in the checkpoint are not asked for
    expected = _weights(te_like[0])
    _assert_same_weights(_weights(local[0]), expected)
    _assert_same_weights(_weights(again[0]), expected)
