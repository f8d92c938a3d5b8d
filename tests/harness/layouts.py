"""Train the same model under several parallel layouts and collect what to compare.

Workers run inside :func:`megatron_solo.platform.spawn`; everything here must be
importable by a spawned process.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable

import torch

from megatron_solo.config import ParallelConfig, TrainConfig, model_preset
from megatron_solo.config.train import OptimConfig
from megatron_solo.model.gpt import build_gpt
from megatron_solo.platform import init_parallel
from megatron_solo.training.checkpointing import TrainState, load_checkpoint, save_checkpoint
from megatron_solo.training.loss import masked_token_loss
from megatron_solo.training.model_build import build_model_chunks, wrap_ddp
from megatron_solo.training.optimizer import build_optimizer, build_scheduler
from megatron_solo.training.step import train_step

VOCAB = 512
SEQ = 32
GLOBAL_BATCH = 8
STEPS = 3


def tiny_gpt_config():
    """The model every layout trains."""
    return model_preset("solo-tiny", vocab_size=VOCAB, vpatch_token_id=VOCAB - 1)


def train_config() -> TrainConfig:
    """fp32, dropout 0, no warm-up, so layouts differ only by reduction order."""
    return TrainConfig(
        micro_batch_size=1,
        global_batch_size=GLOBAL_BATCH,
        seq_length=SEQ,
        train_steps=STEPS,
        bf16=False,
        optim=OptimConfig(lr=1e-3, min_lr=1e-3, warmup_steps=0, decay_style="constant", clip_grad=1.0),
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


def gpt_forward_step(data_iterator, model):
    """forward_step_func for megatron-core's schedules."""
    b = next(data_iterator)
    output = model(b["tokens"], b["position_ids"], None, labels=b["labels"])
    return output, functools.partial(masked_token_loss, b["loss_mask"])


def _gpt_provider(parallel: ParallelConfig) -> Callable:
    cfg = tiny_gpt_config()
    return lambda pre, post, vp: build_gpt(cfg, parallel, pre, post, vp)


def save_initial(out_dir: str) -> None:
    """Worker: build the model at TP1PP1 and save its initial weights."""
    parallel = ParallelConfig()
    init_parallel(parallel, seed=7)
    chunks = wrap_ddp(build_model_chunks(_gpt_provider(parallel), parallel), parallel)
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


def train_layouts(layouts: list[tuple[int, int, int | None]], init_dir: str, out_root: str, corrupt: bool) -> None:
    """Worker: for each (tp, pp, vpp) load the initial weights, train STEPS steps, save, record losses."""
    from megatron.core import parallel_state as ps

    train = train_config()
    for tp, pp, vpp in layouts:
        parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp, virtual_pipeline=vpp)
        dp = init_parallel(parallel, seed=7)
        name = parallel.describe(torch.distributed.get_world_size())
        chunks = wrap_ddp(build_model_chunks(_gpt_provider(parallel), parallel), parallel)
        optimizer = build_optimizer(chunks, train, parallel)
        scheduler = build_scheduler(optimizer, train)
        load_checkpoint(init_dir, chunks)
        if corrupt:
            _corrupt_one_shard(chunks)
        nmb = train.num_microbatches(dp)
        dp_rank = ps.get_data_parallel_rank()
        losses = []
        for step in range(STEPS):
            mine = gpt_batches(step)[dp_rank * nmb : (dp_rank + 1) * nmb]
            iters = [iter(mine) for _ in chunks]
            result = train_step(
                gpt_forward_step, iters, chunks, optimizer, scheduler,
                num_microbatches=nmb, seq_length=SEQ, micro_batch_size=1,
            )
            losses.append(result.loss)
        out_dir = os.path.join(out_root, name)
        save_checkpoint(out_dir, TrainState(iteration=STEPS), chunks)
        if result.loss is not None and dp_rank == 0 and ps.get_tensor_model_parallel_rank() == 0:
            with open(os.path.join(out_dir, "losses.json"), "w") as f:
                json.dump(losses, f)


def read_weights(ckpt_root: str, out_file: str) -> None:
    """Worker (1 process): load a checkpoint at TP1PP1 and save its full weights as safetensors."""
    from safetensors.torch import save_file

    parallel = ParallelConfig()
    init_parallel(parallel, seed=7)
    chunks = build_model_chunks(_gpt_provider(parallel), parallel)
    load_checkpoint(ckpt_root, chunks)
    state = {k: v.detach().clone().contiguous() for k, v in chunks[0].state_dict().items() if torch.is_tensor(v) and "_extra_state" not in k}
    save_file(state, out_file)


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """||a - b|| / ||b|| per tensor name (both dicts must have the same names)."""
    if a.keys() != b.keys():
        raise AssertionError(f"different tensor names: {sorted(set(a) ^ set(b))}")
    return {k: float((a[k] - b[k]).norm() / b[k].norm().clamp(min=1e-30)) for k in a}


def reshard_round_trip(root: str) -> None:
    """Worker (2 processes): save at TP2PP1, load at TP1PP2 and save, load that at TP2PP1 and save."""
    steps = [("a_tp2pp1", (2, 1), None), ("b_tp1pp2", (1, 2), "a_tp2pp1"), ("c_tp2pp1", (2, 1), "b_tp1pp2")]
    for name, (tp, pp), source in steps:
        parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp)
        init_parallel(parallel, seed=11 + tp)
        chunks = wrap_ddp(build_model_chunks(_gpt_provider(parallel), parallel), parallel)
        if source is not None:
            load_checkpoint(os.path.join(root, source), chunks)
        save_checkpoint(os.path.join(root, name), TrainState(iteration=1), chunks)
