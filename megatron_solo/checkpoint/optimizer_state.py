"""The optimizer's part of a checkpoint: its sharded state dict, and loading it into the optimizer in use.

The distributed optimizer is written in megatron-core's ``dp_reshardable`` format: each rank writes its own
shard of the main parameters and moments as they lie in its grad buffers, with no gather and no copy, beside
a bucket index that lets it load at another TP/PP layout too (:mod:`~megatron_solo.checkpoint.optimizer_reshard`);
checkpoints of the fully reshardable format that earlier versions wrote still load. The plain (not distributed)
optimizers are written per parameter, each keyed by the model parameter it updates, so they load at another
TP/PP/DP layout. Two gaps of megatron-core 0.16.1 are closed here: its bf16 optimizer cannot describe a model
that keeps some parameters in fp32 (:func:`optimizer_sharded_state_dict`), and Adam's ``step`` is kept
differently by each optimizer class (:func:`load_optimizer_state`).
"""

from __future__ import annotations

from typing import Any

import torch

from megatron_solo.checkpoint.layout import CheckpointError
from megatron_solo.checkpoint.optimizer_reshard import (
    Reshard,
    bucket_index,
    distributed_optimizers,
    read_bucket_indices,
)

# What the distributed optimizer is saved as: its grad-buffer shards as they are ('fully_reshardable' gathers
# a whole TP/PP shard on every rank; 'fully_sharded_model_space' needs flattened ranges, which
# dist_checkpointing 0.16.1 refuses).
SAVE_FORMAT = {"distrib_optim_sharding_type": "dp_reshardable"}
# The format of checkpoints written by megatron_solo before SAVE_FORMAT (its state keys: optimizer.state.param.*).
GATHERED_FORMAT = {"distrib_optim_sharding_type": "fully_reshardable"}
# Where a load request holds the saved ranges a Reshard reads, in place of 'param_state'.
_RESHARD = "solo_reshard"

# megatron-core's key for a bf16 optimizer's fp32 main copies of the bf16 parameters, per param group.
_MAIN_COPIES = "fp32_from_fp16_params"


def prime_optimizer_state(optimizer) -> None:
    """Give a fresh torch Adam its state tensors (and ``step``) so a checkpoint can load into them.

    megatron-core's distributed optimizer reads ``step`` from the inner optimizer's
    state while building the sharded state dict to load into; a fresh torch Adam has
    none. One step with zero gradients at learning rate 0 creates it without moving
    any weight; the checkpoint then overwrites it.
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if inner is None or len(inner.state) > 0:
            continue
        saved_lr = [g["lr"] for g in inner.param_groups]
        for group in inner.param_groups:
            group["lr"] = 0.0
            for param in group["params"]:
                param.grad = torch.zeros_like(param)
        inner.step()
        inner.zero_grad(set_to_none=True)
        for group, lr in zip(inner.param_groups, saved_lr):
            group["lr"] = lr


def load_optimizer_state(optimizer, state, reshards: dict[int, Reshard] | None = None) -> None:
    """Load the optimizer state (a distributed optimizer's format, or a plain one) read from a checkpoint.

    ``reshards``: by chain position, the DistributedOptimizers whose state is read from a checkpoint of another
    TP/PP layout (:func:`optimizer_load_request`). megatron-core 0.16.1 copies every per-parameter state entry
    when it loads a distributed optimizer's parameter state, including torch Adam's scalar ``step``, which the
    formats keep elsewhere (KeyError 'step', or the step of the state loaded into). The parameter state is
    therefore loaded in a second call, with ``step`` held aside; ``load_state_dict`` has already restored it.
    :func:`_settle_step` then puts ``step`` where the optimizer in use keeps it.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    opts = getattr(optimizer, "chained_optimizers", [optimizer])
    if len(opts) == 1:
        states = [state]
    else:
        states = [v for _, v in sorted(state.items())] if isinstance(state, dict) else list(state)
    for position, (opt, st) in enumerate(zip(opts, states)):
        deferred = st.pop("param_state", None) if isinstance(opt, DistributedOptimizer) else None
        ranges = st.pop(_RESHARD, None)
        inner = opt.optimizer
        _steps_per_parameter(inner, st)
        if isinstance(st.get(_MAIN_COPIES), dict):  # written by _mixed_precision_sharded_state_dict
            st[_MAIN_COPIES] = [st[_MAIN_COPIES].get(i, []) for i in range(len(opt.fp32_from_float16_groups))]
        opt.load_state_dict(st)
        if deferred is not None or ranges is not None:
            held = {p: s.pop("step") for p, s in inner.state.items() if "step" in s}
            with torch.no_grad():  # fp32 main parameters are views of the model's, which require grad
                if ranges is not None:
                    reshards[position].apply(ranges)
                elif st.get("param_state_sharding_type") == "fully_reshardable":
                    opt.load_parameter_state_from_fully_reshardable(deferred)
                else:
                    opt.load_parameter_state_from_dp_reshardable(deferred)
            for p, step in held.items():
                inner.state[p]["step"] = step
        _settle_step(inner)


def _steps_per_parameter(inner: torch.optim.Optimizer, loaded: dict) -> None:
    """Put Adam's ``step`` of a plain (not distributed) optimizer state dict where ``inner`` loads it from.

    torch's Adam refuses a parameter state without ``step`` (KeyError 'step'), which a checkpoint saved with TE's
    FusedAdam keeps per param group only: each state gets the group's. TE's FusedAdam refuses a parameter state
    with one (its load sets each state entry again through a per-name dtype map that has no ``step``: KeyError
    'step'), which megatron-core restores per parameter from a torch Adam checkpoint's ``common_step``: the step
    goes to the param groups instead.
    """
    plain = loaded.get("optimizer", loaded)
    if not isinstance(plain.get("state"), dict):
        return
    if isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
        steps = [g["step"] for g in plain.get("param_groups", []) if "step" in g]
        for state in plain["state"].values():
            if isinstance(state, dict) and state and "step" not in state and steps:
                state["step"] = torch.tensor(float(steps[0]), dtype=torch.float32)
        return
    steps = [plain["state"].pop("common_step")] if "common_step" in plain["state"] else []
    steps += [state.pop("step") for state in plain["state"].values() if isinstance(state, dict) and "step" in state]
    for group in plain.get("param_groups", []) if steps else []:
        group.setdefault("step", int(float(steps[0])))


def _settle_step(inner: torch.optim.Optimizer) -> None:
    """Make the loaded Adam ``step`` the type, and put it in the place, that ``inner`` keeps it in.

    A checkpoint holds ``step`` as the optimizer that wrote it kept it, and megatron-core picks that
    optimizer by what is installed. torch's Adam/AdamW (no TE, no Apex) want a float32 tensor per
    parameter, one each (it is incremented in place); the distributed optimizer saves it as a float per
    param group. TE's and Apex's FusedAdam keep one Python int per param group and pass it to an
    integer kernel argument (megatron-core saves ``int(step)`` for them), so a float from a checkpoint
    written without TE would fail there, and a per-parameter one would restart the count at 1.
    """
    per_param = isinstance(inner, (torch.optim.Adam, torch.optim.AdamW))
    groups = [g for g in inner.param_groups if g["params"]]
    in_params = [inner.state[p]["step"] for g in groups for p in g["params"] if "step" in inner.state.get(p, {})]
    in_groups = [g["step"] for g in groups if "step" in g]
    found = in_params + in_groups if per_param else in_groups + in_params
    if not found:
        return  # an optimizer without a step (SGD), or one never stepped
    step = float(found[0])
    for group in groups:
        fused = group.get("capturable") or group.get("fused")
        for p in group["params"]:
            state = inner.state.get(p)
            if not state:
                continue
            if per_param:
                state["step"] = torch.tensor(step, dtype=torch.float32, device=p.device if fused else "cpu")
            else:
                state.pop("step", None)
        if not per_param:
            group["step"] = int(step)


def check_optimizer_kind(optimizer, held: set[str], path: str) -> None:
    """Refuse, in one line, a checkpoint whose optimizer state the other optimizer kind wrote.

    The distributed optimizer keeps its grad-buffer shards (``optimizer.distributed.dp_group_idx_*``; in the
    gathered format an fp32 copy of every parameter, ``optimizer.state.param.*``); the plain one keeps copies of
    the bf16 parameters only (``optimizer.state.fp32_param.*``), none in fp32.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    if not any(key.startswith("optimizer.") for key in held):
        return  # no optimizer state (an imported checkpoint): nothing to match
    distributed_here = any(isinstance(opt, DistributedOptimizer)
                           for opt in getattr(optimizer, "chained_optimizers", [optimizer]))
    distributed_there = any(key.startswith("optimizer.state.param.") or ".distributed.dp_group_idx_" in key
                            for key in held)
    if distributed_here != distributed_there:
        flag = "without --no-distributed-optimizer" if distributed_there else "with --no-distributed-optimizer"
        kind = "the distributed" if distributed_there else "a plain (not distributed)"
        raise CheckpointError(f"{path}: its optimizer state was written by {kind} optimizer: resume {flag}, "
                              "or start a new run from its weights with --init-from")


def optimizer_sharded_state_dict(optimizer, model_sharded: dict[str, Any], *, is_loading: bool = False,
                                 metadata: dict = SAVE_FORMAT) -> Any:
    """The optimizer's sharded state dict (to save, or with ``is_loading`` to load into)."""
    opts = getattr(optimizer, "chained_optimizers", [optimizer])
    mixed = [opt for opt in opts if _keeps_fp32_model_params(opt)]
    if not mixed:
        state = optimizer.sharded_state_dict(model_sharded, is_loading=is_loading, metadata=metadata)
        return _common_unsharded(optimizer, state) if metadata is SAVE_FORMAT else state
    if len(opts) > 1:
        raise NotImplementedError("a chain of several optimizers over bf16 and fp32 parameters: use the "
                                  "distributed optimizer")
    return _mixed_precision_sharded_state_dict(opts[0], model_sharded, is_loading)


def _distributed_states(optimizer, state) -> list[tuple[int, Any, str, dict]]:
    """(chain position, DistributedOptimizer, key prefix, its part of ``state``) of each distributed one."""
    chain = getattr(optimizer, "chained_optimizers", [optimizer])
    return [(i, opt, prefix, state if len(chain) == 1 else state[i])
            for i, opt, prefix in distributed_optimizers(optimizer)]


def _common_unsharded(optimizer, state) -> Any:
    """A dp_reshardable state dict whose small objects are saved as common state, read without pickle.

    megatron-core makes the param groups and the bucket sizes objects per model-parallel rank (pickled, as
    the loader then unpickles them); the fully reshardable format saves the param groups as common state
    (rank 0's, loaded at every layout), and the bucket sizes are the bucket index's business here.
    """
    from megatron.core.dist_checkpointing.mapping import LocalNonpersistentObject, ShardedObject

    for _, _, _, st in _distributed_states(optimizer, state):
        for key, value in list(st.items()):
            if isinstance(value, ShardedObject):
                st[key] = value.data
        param_state = st.get("param_state", {})
        for key in ("per_bucket_numel", "per_bucket_numel_unpadded"):
            if isinstance(param_state.get(key), ShardedObject):
                param_state[key] = LocalNonpersistentObject(param_state[key].data)
    return state


def optimizer_load_request(optimizer, model_sharded: dict[str, Any], path: str,
                           held: set[str]) -> tuple[Any, dict[int, Reshard]]:
    """(the optimizer's part of the load request for checkpoint ``path``, the Reshards of its distributed
    optimizers when the checkpoint's grad buffers are laid out otherwise: another TP/PP layout).

    Collective: the ranks agree on whether to reshard (one small all-reduce).
    """
    from megatron_solo.platform.distributed import ranks_with

    if any(key.startswith("optimizer.state.param.") for key in held):  # written in GATHERED_FORMAT
        return optimizer_sharded_state_dict(optimizer, model_sharded, is_loading=True,
                                            metadata=GATHERED_FORMAT), {}
    request = optimizer_sharded_state_dict(optimizer, model_sharded, is_loading=True)
    parts = _distributed_states(optimizer, request)
    if not parts:
        return request, {}
    saved = {i: read_bucket_indices(path, i) for i, _, _, _ in parts}
    differs = any(saved[i].get(opt.data_parallel_group_idx) != bucket_index(opt, prefix, model_sharded)
                  for i, opt, prefix, _ in parts)
    if not ranks_with(differs):
        return request, {}
    reshards = {}
    for i, opt, _, st in parts:
        reshards[i] = Reshard(opt, model_sharded, saved[i])
        st.pop("param_state")
        st[_RESHARD] = reshards[i].request()
    return request, reshards


def _keeps_fp32_model_params(opt) -> bool:
    """A bf16/fp16 optimizer (not distributed) over a model with some fp32 parameters (the local spec's norms)."""
    return any(len(group) for group in getattr(opt, "fp32_from_fp32_groups", []))


def _mixed_precision_sharded_state_dict(opt, model_sharded: dict[str, Any], is_loading: bool) -> dict:
    """megatron-core's Float16OptimizerWithFloat16Params.sharded_state_dict, right when fp32 params take part.

    megatron-core numbers the optimizer's state by the bf16 parameters alone, while the inner optimizer
    numbers every parameter it updates: the fp32 main copies of the bf16 parameters and the model's own
    fp32 parameters, interleaved. Each parameter is keyed here by the model parameter it stands for, as
    megatron-core keys them when there is no fp32 one, so the checkpoint reads the same.
    """
    from megatron.core.dist_checkpointing.optimizer import (
        get_param_id_to_sharded_param_map,
        make_sharded_optimizer_tensor,
        optim_state_to_sharding_state,
    )

    if is_loading:
        opt.init_state_fn(opt.optimizer, opt.config)
    state_dict = opt.state_dict()
    model_param = {id(main): half for halves, mains in zip(opt.float16_groups, opt.fp32_from_float16_groups)
                   for half, main in zip(halves, mains)}
    updated = [p for group in opt.optimizer.param_groups for p in group["params"]]  # state ids: their order
    by_id = get_param_id_to_sharded_param_map(model_sharded, [model_param.get(id(p), p) for p in updated])
    state_id = {id(p): i for i, p in enumerate(updated)}
    # by group index, the groups without bf16 parameters left out: dist_checkpointing cannot take an empty
    # list among lists of sharded tensors (it misplaces it when it splits off the common state)
    state_dict[_MAIN_COPIES] = {
        i: [make_sharded_optimizer_tensor(by_id[state_id[id(main)]], main, prefix="optimizer.state.fp32_param")
            for main in mains]
        for i, mains in enumerate(opt.fp32_from_float16_groups) if mains
    }
    step = opt._extract_common_per_param_step(state_dict["optimizer"])
    optim_state_to_sharding_state(state_dict["optimizer"], by_id, exclude_keys="step")
    if step:
        state_dict["optimizer"]["state"]["common_step"] = step
    return state_dict
