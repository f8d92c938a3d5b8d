"""Adam's ``step`` after an optimizer load is what the optimizer in use expects, whichever optimizer saved it.

megatron-core picks the optimizer at import: torch's AdamW without Transformer Engine and Apex (``step`` a float32
tensor per parameter), TE's FusedAdam with TE (one ``step`` per param group, handed to an integer kernel argument:
``group["step"] += 1`` then ``multi_tensor_adam(..., group["step"], ...)``). A distributed-optimizer checkpoint saved
without TE stores the group ``step`` as a float (``distrib_optimizer.py`` ``state_dict``), which that kernel refuses.
"""

from __future__ import annotations

import operator

import pytest
import torch

from megatron_solo.checkpoint.optimizer_state import prime_optimizer_state
from megatron_solo.checkpoint.state import (
    TrainState,
    load_checkpoint,
    save_checkpoint,
)
from megatron_solo.config import ParallelConfig, TrainConfig
from megatron_solo.config.train import OptimConfig
from megatron_solo.model.builder import solo_provider
from megatron_solo.model.chunks import build_model_chunks
from megatron_solo.platform import init_parallel
from tests.harness import solo_batches as SB

TRAIN = TrainConfig(micro_batch_size=1, global_batch_size=1, seq_length=32, train_steps=10, bf16=False,
                    optim=OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=2))


class FusedAdamStandIn(torch.optim.Optimizer):
    """TE's FusedAdam as far as ``step`` goes: per-group int, per-parameter exp_avg/exp_avg_sq only.

    A stand-in because TE cannot be imported without CUDA. Its kernel call is ``operator.index``, which refuses a
    float exactly as pybind11 refuses one for the kernel's ``int step`` argument; its ``load_state_dict`` sets
    each loaded state entry again by name, as TE's does, which knows no per-parameter ``step``.
    """

    STATE_DTYPES = {"exp_avg": torch.float32, "exp_avg_sq": torch.float32, "master_param": torch.float32}

    def __init__(self, params, **defaults):
        super().__init__(params, defaults)

    def step(self, closure=None):
        """Advance the group step as TE does and check it is one the kernel accepts."""
        for group in self.param_groups:
            if not group["params"]:
                continue
            group["step"] = group["step"] + 1 if "step" in group else 1
            operator.index(group["step"])  # TypeError for 3.0, as the kernel's int argument
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
        return None

    def load_state_dict(self, state_dict):
        """As TE's: torch's load, then each state entry set again through its per-name dtype (none for ``step``)."""
        super().load_state_dict(state_dict)
        ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for i, p in zip(ids, params):
            if i in state_dict["state"]:
                self.state[p] = {name: value.to(self.STATE_DTYPES[name])  # KeyError 'step', as TE's dtype map
                                 for name, value in state_dict["state"][i].items() if value is not None}


def _optimizer(seed: int, parallel: ParallelConfig):
    from megatron_solo.training.ddp import wrap_ddp
    from megatron_solo.training.optimizer import build_optimizer

    init_parallel(parallel, seed=seed)
    torch.manual_seed(seed)
    chunks = wrap_ddp(build_model_chunks(solo_provider(SB.tiny_solo_config(), parallel), parallel), parallel)
    return chunks, build_optimizer(chunks, TRAIN, parallel)


def _save_after_steps(root, parallel: ParallelConfig, steps: int) -> None:
    """A checkpoint written by this machine's optimizer (torch AdamW: no TE, no Apex) after ``steps`` steps."""
    chunks, optimizer = _optimizer(1, parallel)
    prime_optimizer_state(optimizer)
    for s in _inner(optimizer).optimizer.state.values():
        s["step"].fill_(float(steps))
    save_checkpoint(str(root), TrainState(iteration=steps), chunks, optimizer)


def _inner(optimizer):
    """The one torch-level optimizer under megatron-core's wrapper (a ChainedOptimizer of one without DP sharding)."""
    (wrapper,) = getattr(optimizer, "chained_optimizers", [optimizer])
    return wrapper


def _as_with_te(optimizer, monkeypatch) -> FusedAdamStandIn:
    """Give ``optimizer`` the inner optimizer and the megatron-core flags it has where TE is installed."""
    from megatron.core.optimizer import distrib_optimizer

    monkeypatch.setattr(distrib_optimizer, "HAVE_APEX_OR_TE", True)
    monkeypatch.setattr(distrib_optimizer, "USING_TE_OPTIMIZER", True)
    wrapper = _inner(optimizer)
    fused = FusedAdamStandIn([torch.nn.Parameter(torch.zeros(1))], **wrapper.optimizer.defaults)
    # The groups as megatron-core hands them over (the distributed optimizer's shards are views, which the
    # constructor would refuse; megatron-core assigns them the same way).
    fused.param_groups = wrapper.optimizer.param_groups
    wrapper.optimizer = fused
    return fused


@pytest.mark.parametrize("distributed", [True, False], ids=["distributed", "plain"])
def test_step_saved_by_torch_adam_is_an_int_for_te_fused_adam(world1, tmp_path, monkeypatch, distributed):
    parallel = ParallelConfig(use_distributed_optimizer=distributed)
    _save_after_steps(tmp_path, parallel, steps=3)
    chunks, optimizer = _optimizer(2, parallel)
    inner = _as_with_te(optimizer, monkeypatch)
    load_checkpoint(str(tmp_path), chunks, optimizer)
    groups = [g for g in inner.param_groups if g["params"]]
    assert groups and all(type(g["step"]) is int and g["step"] == 3 for g in groups)
    assert not [s for s in inner.state.values() if "step" in s]  # FusedAdam keeps none per parameter
    inner.step()
    assert all(g["step"] == 4 for g in groups)


@pytest.mark.parametrize("distributed", [True, False], ids=["distributed", "plain"])
def test_step_is_a_float32_tensor_per_parameter_for_torch_adam(world1, tmp_path, distributed):
    parallel = ParallelConfig(use_distributed_optimizer=distributed)
    _save_after_steps(tmp_path, parallel, steps=5)
    chunks, optimizer = _optimizer(3, parallel)
    load_checkpoint(str(tmp_path), chunks, optimizer)
    inner = _inner(optimizer).optimizer
    assert isinstance(inner, torch.optim.AdamW)
    steps = [inner.state[p]["step"] for g in inner.param_groups for p in g["params"]]
    assert steps and all(torch.is_tensor(s) and s.dtype == torch.float32 and s.item() == 5.0 for s in steps)
    assert len({id(s) for s in steps}) == len(steps)  # Adam increments each in place: one tensor each


@pytest.mark.parametrize("distributed", [True, False], ids=["distributed", "plain"])
def test_step_saved_by_te_fused_adam_is_a_tensor_per_parameter_for_torch_adam(world1, tmp_path, distributed):
    parallel = ParallelConfig(use_distributed_optimizer=distributed)
    with pytest.MonkeyPatch.context() as with_te:  # saved where TE is installed: an int per param group
        chunks, optimizer = _optimizer(1, parallel)
        inner = _as_with_te(optimizer, with_te)
        prime_optimizer_state(optimizer)
        for group in inner.param_groups:
            group["step"] = 7
        save_checkpoint(str(tmp_path), TrainState(iteration=7), chunks, optimizer)
    chunks, optimizer = _optimizer(2, parallel)
    load_checkpoint(str(tmp_path), chunks, optimizer)
    inner = _inner(optimizer).optimizer
    steps = [inner.state[p]["step"] for g in inner.param_groups for p in g["params"]]
    assert steps and all(torch.is_tensor(s) and s.dtype == torch.float32 and s.item() == 7.0 for s in steps)
    for group in inner.param_groups:  # torch's Adam takes it: one step counts on from 7
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    inner.step()
    assert all(inner.state[p]["step"].item() == 8.0 for g in inner.param_groups for p in g["params"])
