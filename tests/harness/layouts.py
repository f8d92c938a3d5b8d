"""Train the same model under several parallel layouts and collect what to compare.

Workers run inside :func:`megatron_solo.platform.spawn`; everything here must be
importable by a spawned process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import torch

from megatron_solo.checkpoint.state import TrainState, load_checkpoint, save_checkpoint
from megatron_solo.config import ParallelConfig, TrainConfig, model_preset
from megatron_solo.config.train import OptimConfig
from megatron_solo.model.builder import solo_provider
from megatron_solo.model.chunks import build_model_chunks
from megatron_solo.model.gpt import build_gpt
from megatron_solo.platform import init_parallel
from megatron_solo.training.ddp import wrap_ddp
from megatron_solo.training.forward_step import solo_forward_step, text_forward_step
from megatron_solo.training.optimizer import build_optimizer, build_scheduler
from megatron_solo.training.step import train_step
from tests.harness import solo_batches as SB

VOCAB = 512
SEQ = 32
GLOBAL_BATCH = 8
STEPS = 3


def tiny_gpt_config():
    """The model every layout trains."""
    return model_preset("solo-tiny", vocab_size=VOCAB, vpatch_token_id=VOCAB - 1)


def train_config(kind: str = "gpt") -> TrainConfig:
    """fp32, dropout 0, no warm-up, so layouts differ only by reduction order.

    SoloModel runs use SGD without momentum, so the weight update IS the gradient and
    the comparison checks gradients directly (Adam's normalisation magnifies noise on
    near-zero gradients).
    """
    return TrainConfig(
        micro_batch_size=1,
        global_batch_size=GLOBAL_BATCH,
        seq_length=SEQ,
        train_steps=STEPS,
        bf16=False,
        optim=OptimConfig(
            optimizer="sgd" if kind == "solo" else "adam", lr=1e-3 if kind == "gpt" else 1.0,
            min_lr=1e-3 if kind == "gpt" else 1.0, warmup_steps=0, decay_style="constant",
            clip_grad=1.0 if kind == "gpt" else 0.0, weight_decay=0.1 if kind == "gpt" else 0.0,
        ),
    )


def gpt_batches(step: int) -> list[dict[str, torch.Tensor]]:
    """The global batch of ``step`` (identical in every layout), one dict per sequence."""
    g = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ + 1), generator=g)
    mask = (torch.rand(GLOBAL_BATCH, SEQ, generator=g) > 0.2).float()
    return [
        dict(
            tokens=t[None, :-1],
            labels=t[None, 1:],
            position_ids=torch.arange(SEQ)[None],
            loss_mask=m[None],
        )
        for t, m in zip(tokens, mask)
    ]


def solo_batches(step: int) -> list[dict[str, torch.Tensor]]:
    """The global batch of ``step`` for SoloModel: packs of documents with images."""
    g = torch.Generator().manual_seed(2000 + step)
    return [SB.pack(g, SEQ) for _ in range(GLOBAL_BATCH)]


def _provider(kind: str, parallel: ParallelConfig) -> Callable:
    if kind == "solo":
        return solo_provider(SB.tiny_solo_config(), parallel)
    cfg = tiny_gpt_config()
    return lambda pre, post, vp: build_gpt(cfg, parallel, pre, post, vp)


_BATCHES = {"gpt": gpt_batches, "solo": solo_batches}
_FORWARD = {"gpt": text_forward_step, "solo": solo_forward_step}


def save_initial(out_dir: str, kind: str = "gpt") -> None:
    """Worker: build the model at TP1PP1 and save its initial weights."""
    parallel = ParallelConfig()
    init_parallel(parallel, seed=7)
    chunks = wrap_ddp(build_model_chunks(_provider(kind, parallel), parallel), parallel)
    save_checkpoint(out_dir, TrainState(iteration=0), chunks)


def _corrupt_one_shard(chunks) -> None:
    """Deliberately mis-shard: permute the rows of one TP shard on TP rank 1."""
    from megatron.core import parallel_state as ps

    if ps.get_tensor_model_parallel_rank() != 1:
        return
    for name, param in chunks[0].named_parameters():
        if "linear_fc1.weight" in name:
            with torch.no_grad():
                param.copy_(param.flip(0))
            return


def train_layouts(
    layouts: list[tuple], init_dir: str, out_root: str, corrupt: bool, kind: str = "gpt"
) -> None:
    """Worker: for each (tp, pp, vpp[, sequence_parallel]) load the initial weights, train STEPS steps, save,
    record losses."""
    from megatron.core import parallel_state as ps

    train = train_config(kind)
    for tp, pp, vpp, *sp in layouts:
        # megatron-core's distributed optimizer is Adam-only; the SGD runs use the plain one.
        parallel = ParallelConfig(
            tensor_parallel=tp, pipeline_parallel=pp, virtual_pipeline=vpp, sequence_parallel=bool(sp and sp[0]),
            use_distributed_optimizer=kind == "gpt",
        )
        dp = init_parallel(parallel, seed=7)
        name = parallel.describe(torch.distributed.get_world_size())
        chunks = wrap_ddp(build_model_chunks(_provider(kind, parallel), parallel), parallel)
        optimizer = build_optimizer(chunks, train, parallel)
        scheduler = build_scheduler(optimizer, train)
        load_checkpoint(init_dir, chunks)
        if corrupt:
            _corrupt_one_shard(chunks)
        nmb = train.num_microbatches(dp)
        dp_rank = ps.get_data_parallel_rank()
        losses = []
        for step in range(STEPS):
            mine = _BATCHES[kind](step)[dp_rank * nmb : (dp_rank + 1) * nmb]
            iters = [iter(mine) for _ in chunks]
            result = train_step(
                _FORWARD[kind], iters, chunks, optimizer, scheduler,
                num_microbatches=nmb, seq_length=SEQ, micro_batch_size=1,
            )
            losses.append(result.loss)
        out_dir = os.path.join(out_root, name)
        save_checkpoint(out_dir, TrainState(iteration=STEPS), chunks)
        last_stage = ps.is_pipeline_last_stage(ignore_virtual=True)
        if last_stage and dp_rank == 0 and ps.get_tensor_model_parallel_rank() == 0:
            with open(os.path.join(out_dir, "losses.json"), "w") as f:
                json.dump(losses, f)


def read_weights(ckpt_root: str, out_file: str, kind: str = "gpt") -> None:
    """Worker (1 process): load a checkpoint at TP1PP1 and save its full weights as safetensors."""
    from safetensors.torch import save_file

    parallel = ParallelConfig()
    init_parallel(parallel, seed=7)
    chunks = build_model_chunks(_provider(kind, parallel), parallel)
    load_checkpoint(ckpt_root, chunks)
    state = {k: v.detach().clone().contiguous() for k, v in chunks[0].state_dict().items() if torch.is_tensor(v) and "_extra_state" not in k}
    save_file(state, out_file)


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """||a - b|| / ||b|| per tensor name (both dicts must have the same names)."""
    if a.keys() != b.keys():
        raise AssertionError(f"different tensor names: {sorted(set(a) ^ set(b))}")
    return {k: float((a[k] - b[k]).norm() / b[k].norm().clamp(min=1e-30)) for k in a}


# The layouts a checkpoint goes through, each loading the one before: (name, (tp, pp, vpp), source)
RESHARD_STEPS = [("a_tp2pp1", (2, 1, None), None), ("b_tp1pp2", (1, 2, None), "a_tp2pp1"),
                 ("c_tp2pp1", (2, 1, None), "b_tp1pp2"), ("d_dp2", (1, 1, None), "c_tp2pp1"),
                 ("e_tp1pp2vp2", (1, 2, 2), "d_dp2")]


def reshard_round_trip(root: str) -> None:
    """Worker (2 processes): weights and distributed optimizer through RESHARD_STEPS. The first layout's
    optimizer state is random (step 3); after each load the state is also saved in megatron-core's own
    gathered model-space format, ``<name>_reference``, to compare."""
    from megatron.core import dist_checkpointing

    from megatron_solo.checkpoint.optimizer_state import GATHERED_FORMAT, optimizer_sharded_state_dict

    for name, (tp, pp, vpp), source in RESHARD_STEPS:
        parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp, virtual_pipeline=vpp)
        init_parallel(parallel, seed=11 + tp)
        chunks = wrap_ddp(build_model_chunks(_provider("gpt", parallel), parallel), parallel)
        optimizer = build_optimizer(chunks, train_config(), parallel)
        if source is None:
            _random_optimizer_state(optimizer, step=3)
        else:
            load_checkpoint(os.path.join(root, source), chunks, optimizer)
            steps = {float(s["step"]) for opt in optimizer.chained_optimizers for s in opt.optimizer.state.values()}
            assert steps == {3.0}, (name, steps)
        save_checkpoint(os.path.join(root, name), TrainState(iteration=1), chunks, optimizer)
        model = {f"model{i}": c.module.sharded_state_dict() for i, c in enumerate(chunks)}
        reference = optimizer_sharded_state_dict(optimizer, model, metadata=GATHERED_FORMAT)
        os.makedirs(os.path.join(root, f"{name}_reference"), exist_ok=True)
        dist_checkpointing.save({"optimizer": reference}, os.path.join(root, f"{name}_reference"))


def _random_optimizer_state(optimizer, step: int) -> None:
    """Every main parameter and moment of this rank's shard drawn at random, Adam's step set to ``step``."""
    from megatron_solo.checkpoint.optimizer_state import prime_optimizer_state

    prime_optimizer_state(optimizer)
    torch.manual_seed(100 + torch.distributed.get_rank())
    for opt in optimizer.chained_optimizers:
        for state in opt.optimizer.state.values():
            state["step"].fill_(float(step))
            for key in ("exp_avg", "exp_avg_sq"):
                state[key].copy_(torch.rand_like(state[key]))
        for group in opt.optimizer.param_groups:
            for main in group["params"]:
                with torch.no_grad():
                    main.copy_(torch.randn_like(main))


def read_optimizer_reference(ckpt: str, out_file: str) -> None:
    """Worker (1 process): the model-space optimizer tensors of a ``*_reference`` checkpoint, as safetensors."""
    from megatron.core import dist_checkpointing
    from safetensors.torch import save_file

    tensors = dist_checkpointing.load_plain_tensors(ckpt)
    save_file({k: v.contiguous() for k, v in tensors.items() if k.startswith("optimizer.state.")}, out_file)


def run_layouts(root, kind: str, worlds: dict[int, list], corrupt_tp2: bool = False) -> dict:
    """Train the reference and every layout in ``worlds`` (world size -> (tp, pp, vpp[, sequence_parallel])) from one init.

    One world per size; the one-rank work (the initial weights, the reference run, reading every
    result back at TP1PP1) runs in the pytest process. With ``corrupt_tp2`` the two-rank world also
    trains TP2 with one shard deliberately permuted. Returns name -> (losses, full weights at TP1PP1),
    plus "init" -> (None, initial weights).
    """
    from pathlib import Path

    from safetensors.torch import load_file

    from tests.harness.worlds import each_case, run_world

    root = Path(root)
    init = str(root / "init")
    run_world(save_initial, 1, init, kind)
    run_world(train_layouts, 1, [(1, 1, None)], init, str(root), False, kind)
    names = ["TP1PP1DP1"]
    corrupt = {2: [([(2, 1, None)], init, str(root / "corrupt"), True, kind)]} if corrupt_tp2 else {}
    for world in sorted(set(worlds) | set(corrupt)):
        layouts = worlds.get(world, [])
        run_world(each_case, world, train_layouts, [(layouts, init, str(root), False, kind), *corrupt.get(world, [])])
        names += [ParallelConfig(*layout).describe(world) for layout in layouts]
    names += ["corrupt/TP2PP1DP1"] if corrupt_tp2 else []
    out = {}
    for name in [*names, "init"]:
        src = init if name == "init" else str(root / name)
        weights = str(root / (name.replace("/", "_") + ".safetensors"))
        run_world(read_weights, 1, src, weights, kind)
        losses = None if name == "init" else json.loads((root / name / "losses.json").read_text())
        out[name] = (losses, load_file(weights))
    return out


def global_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||b|| over all tensors taken as one vector."""
    num = sum(float((a[k] - b[k]).double().pow(2).sum()) for k in b)
    den = sum(float(b[k].double().pow(2).sum()) for k in b)
    return (num / max(den, 1e-300)) ** 0.5


def assert_layout_matches(runs: dict, name: str, update_rtol: float | None = None) -> None:
    """Losses and weights (rel. 1e-5) and the updates match TP1PP1DP1.

    Updates: each tensor within 1e-3; with ``update_rtol`` also the whole update vector.
    """
    ref_losses, ref_weights = runs["TP1PP1DP1"]
    losses, weights = runs[name]
    init = runs["init"][1]
    assert len(losses) == STEPS
    for a, b in zip(losses, ref_losses):
        assert abs(a - b) / abs(b) <= 1e-5, (name, losses, ref_losses)
    weight_diff = relative_difference(weights, ref_weights)
    assert max(weight_diff.values()) <= 1e-5, (name, weight_diff)
    # The updates (not only the weights, which barely move in a few steps) agree.
    update = {k: weights[k] - init[k] for k in weights}
    ref_update = {k: ref_weights[k] - init[k] for k in ref_weights}
    update_diff = relative_difference(update, ref_update)
    assert max(update_diff.values()) <= 1e-3, (name, update_diff)
    if update_rtol is not None:
        assert global_relative_difference(update, ref_update) <= update_rtol, (name, update_diff)
