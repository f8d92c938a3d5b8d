"""The distributed optimizer's checkpoint in a one-process world: its state read through the bucket index when the
grad buffers are laid out otherwise, the gathered format of earlier checkpoints, and the save strategy kept while
the structure holds. (Other TP/PP/DP layouts: tests/training/test_parallel_layouts.py.)"""

from __future__ import annotations

import functools

import pytest
import torch

from megatron_solo.checkpoint import optimizer_state, state
from megatron_solo.checkpoint.optimizer_reshard import INDEX_DIR, Reshard
from megatron_solo.checkpoint.optimizer_state import GATHERED_FORMAT, prime_optimizer_state
from megatron_solo.checkpoint.state import TrainState, load_checkpoint, save_checkpoint
from megatron_solo.config import ParallelConfig, TrainConfig
from megatron_solo.config.train import OptimConfig
from megatron_solo.model.builder import solo_provider
from megatron_solo.model.chunks import build_model_chunks
from megatron_solo.platform import init_parallel
from tests.harness import solo_batches as SB

TRAIN = TrainConfig(micro_batch_size=1, global_batch_size=1, seq_length=32, train_steps=10, bf16=False,
                    optim=OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=2))
PARALLEL = ParallelConfig()


def _trained(seed: int, bucket_size: int | None = None):
    """(chunks, distributed optimizer) with a random state; ``bucket_size``: grad buffers of several buckets."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from megatron_solo.training.ddp import wrap_ddp
    from megatron_solo.training.optimizer import build_optimizer

    init_parallel(PARALLEL, seed=seed)
    torch.manual_seed(seed)
    chunks = build_model_chunks(solo_provider(SB.tiny_solo_config(), PARALLEL), PARALLEL)
    if bucket_size is None:
        chunks = wrap_ddp(chunks, PARALLEL)
    else:
        config = DistributedDataParallelConfig(use_distributed_optimizer=True, overlap_grad_reduce=True,
                                               bucket_size=bucket_size)
        chunks = [DistributedDataParallel(c.config, config, c) for c in chunks]
    optimizer = build_optimizer(chunks, TRAIN, PARALLEL)
    prime_optimizer_state(optimizer)
    for opt in optimizer.chained_optimizers:
        for st in opt.optimizer.state.values():
            st["exp_avg"].copy_(torch.rand_like(st["exp_avg"]))
            st["exp_avg_sq"].copy_(torch.rand_like(st["exp_avg_sq"]))
    return chunks, optimizer


def _states(chunks, optimizer) -> dict[str, dict[str, torch.Tensor]]:
    """Per model parameter name: its main parameter and moments (whole, as one rank holds them)."""
    (opt,) = optimizer.chained_optimizers
    return {name: {k: v.detach().clone() for k, v in opt._get_main_param_and_optimizer_states(p).items()
                   if k != "step"}
            for name, p in chunks[0].module.named_parameters()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys() == {"param", "exp_avg", "exp_avg_sq"}
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), (name, k)


def test_other_grad_buckets_read_the_state_through_the_bucket_index(world1, tmp_path, monkeypatch):
    chunks, optimizer = _trained(1)
    save_checkpoint(str(tmp_path), TrainState(iteration=1), chunks, optimizer)
    assert (tmp_path / "iter_0000001" / INDEX_DIR / "0.0.json").is_file()
    saved = _states(chunks, optimizer)
    applied = []
    monkeypatch.setattr(Reshard, "apply", functools.partialmethod(_spy, Reshard.apply, applied))
    same = _trained(2)
    load_checkpoint(str(tmp_path), *same)  # the same buckets: megatron-core's own load
    assert applied == []
    _assert_same(_states(*same), saved)
    several = _trained(3, bucket_size=40_000)
    assert len(several[0][0].buffers[0].buckets) > 1
    load_checkpoint(str(tmp_path), *several)
    assert len(applied) == 1
    _assert_same(_states(*several), saved)


def _spy(self, real, calls, loaded):
    calls.append(self)
    return real(self, loaded)


def test_a_checkpoint_of_the_gathered_format_still_loads(world1, tmp_path, monkeypatch):
    chunks, optimizer = _trained(4)
    with monkeypatch.context() as older:  # as megatron_solo wrote checkpoints before the bucket shards
        older.setattr(state, "optimizer_sharded_state_dict",
                      functools.partial(optimizer_state.optimizer_sharded_state_dict, metadata=GATHERED_FORMAT))
        older.setattr(state, "write_bucket_indices", lambda *args: None)
        save_checkpoint(str(tmp_path), TrainState(iteration=1), chunks, optimizer)
    from megatron.core.dist_checkpointing import load_tensors_metadata

    assert any(k.startswith("optimizer.state.param.") for k in load_tensors_metadata(str(tmp_path / "iter_0000001")))
    again = _trained(5)
    load_checkpoint(str(tmp_path), *again)
    _assert_same(_states(*again), _states(chunks, optimizer))


def test_the_save_strategy_is_kept_while_the_structure_holds(world1):
    from megatron_solo.checkpoint.save_strategy import save_strategy

    chunks, _ = _trained(6)
    sharded = {"model": chunks[0].module.sharded_state_dict()}
    first, new = save_strategy(sharded)
    assert new
    assert save_strategy({"model": chunks[0].module.sharded_state_dict()}) == (first, False)
    other, _ = _trained(7, bucket_size=40_000)  # the same model: the same structure, but a new process group
    assert save_strategy({"model": other[0].module.sharded_state_dict()})[1]
    wider = build_model_chunks(solo_provider(SB.tiny_solo_config(ffn_hidden_size=256), PARALLEL), PARALLEL)
    changed, new = save_strategy({"model": wider[0].sharded_state_dict()})
    assert new and changed is not first


def test_a_bucket_index_that_cannot_be_written_fails_the_save_in_one_line(world1, tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    from megatron_solo.checkpoint import CheckpointError

    chunks, optimizer = _trained(8)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(CheckpointError, match=r"iter_0000001: cannot write the checkpoint \(OSError: .*No space"):
        save_checkpoint(str(tmp_path), TrainState(iteration=1), chunks, optimizer)
    monkeypatch.undo()
    assert not (tmp_path / "iter_0000001").exists()
