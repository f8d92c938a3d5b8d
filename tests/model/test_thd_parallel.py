"""The thd layout across processes: TP2 and PP2 (activations sent between stages as thd views),
two packs per micro-batch, trained by megatron-core's schedule, match the sbhd layout on one process;
so do both layouts with sequence parallelism at TP2 and TP2 x PP2 (images in every micro-batch).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from megatron_solo.checkpoint.state import TrainState, load_checkpoint, save_checkpoint
from megatron_solo.config import ParallelConfig, TrainConfig
from megatron_solo.config.train import OptimConfig
from megatron_solo.data.dataset import collate_packs
from megatron_solo.model.builder import build_solo_model
from megatron_solo.model.chunks import build_model_chunks
from megatron_solo.platform import init_parallel
from megatron_solo.training.ddp import wrap_ddp
from megatron_solo.training.forward_step import solo_forward_step
from megatron_solo.training.optimizer import build_optimizer, build_scheduler
from megatron_solo.training.step import train_step
from tests.harness import layouts as H
from tests.harness import solo_batches as SB
from tests.harness.worlds import each_case, run_world

pytestmark = pytest.mark.multiprocess

SEQ, MICRO, GLOBAL, STEPS = 32, 2, 8, 2
# run name -> (tp, pp, packed format[, sequence parallel])
PLAN = {"sbhd": (1, 1, "sbhd"), "thd": (1, 1, "thd"), "thd_TP2": (2, 1, "thd"), "thd_PP2": (1, 2, "thd"),
        "thd_TP2_SP": (2, 1, "thd", True), "sbhd_TP2PP2_SP": (2, 2, "sbhd", True),
        "thd_TP2PP2_SP": (2, 2, "thd", True)}


def _micro_batches(step: int) -> list[dict]:
    """The step's global batch as micro-batches of MICRO collated packs (identical in every run)."""
    g = torch.Generator().manual_seed(3000 + step)
    packs = []
    for _ in range(GLOBAL):
        p = SB.pack(g, SEQ)
        packs.append({k: (v[0] if k in ("tokens", "labels", "loss_mask", "position_ids") else v) for k, v in p.items()})
    return [collate_packs(packs[i:i + MICRO]) for i in range(0, GLOBAL, MICRO)]


def train_format(init_dir: str, out_dir: str, tp: int, pp: int, packed_format: str, sp: bool = False) -> None:
    """Worker: load the initial weights at TP x PP (``sp``: sequence parallel), train STEPS SGD steps in
    ``packed_format``, save."""
    # SGD (the update IS the gradient); megatron-core's distributed optimizer is Adam-only.
    parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp, sequence_parallel=sp,
                              use_distributed_optimizer=False)
    init_parallel(parallel, seed=7)
    cfg = SB.tiny_solo_config(sliding_window=6)
    train = TrainConfig(micro_batch_size=MICRO, global_batch_size=GLOBAL, seq_length=SEQ, train_steps=STEPS,
                        bf16=False, optim=OptimConfig(optimizer="sgd", lr=1.0, min_lr=1.0, warmup_steps=0,
                                                      decay_style="constant", clip_grad=0.0, weight_decay=0.0))
    provider = lambda pre, post, vp: build_solo_model(cfg, parallel, pre, post, vp, packed_format=packed_format)  # noqa: E731
    chunks = wrap_ddp(build_model_chunks(provider, parallel), parallel)
    optimizer = build_optimizer(chunks, train, parallel)
    scheduler = build_scheduler(optimizer, train)
    load_checkpoint(init_dir, chunks)
    losses = []
    for step in range(STEPS):
        result = train_step(solo_forward_step, [iter(_micro_batches(step))], chunks, optimizer, scheduler,
                            num_microbatches=GLOBAL // MICRO, seq_length=SEQ, micro_batch_size=MICRO)
        losses.append(result.loss)
    save_checkpoint(out_dir, TrainState(iteration=STEPS), chunks)
    if torch.distributed.get_rank() == torch.distributed.get_world_size() - 1:
        with open(os.path.join(out_dir, "losses.json"), "w") as f:
            json.dump(losses, f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """sbhd on one process, thd on one process, at TP2 and at PP2, and the sequence-parallel layouts; each
    run's losses and weights."""
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("thd_layouts")
    init = str(root / "init")
    run_world(H.save_initial, 1, init, "solo")
    for world in (1, 2, 4):  # one world per size, running each of its layouts in turn
        run_world(each_case, world, train_format, [(init, str(root / name), *layout)
                                                   for name, layout in PLAN.items() if layout[0] * layout[1] == world])
    out = {}
    for name in [*PLAN, "init"]:
        weights = str(root / f"{name}.safetensors")
        run_world(H.read_weights, 1, init if name == "init" else str(root / name), weights, "solo")
        losses = None if name == "init" else json.loads((root / name / "losses.json").read_text())
        out[name] = (losses, load_file(weights))
    return out


@pytest.mark.parametrize("name", [name for name in PLAN if name != "sbhd"])
def test_thd_training_matches_sbhd(runs, name):
    ref_losses, ref_weights = runs["sbhd"]
    losses, weights = runs[name]
    assert len(losses) == STEPS
    for a, b in zip(losses, ref_losses):
        assert abs(a - b) <= 1e-5 * abs(b), (losses, ref_losses)
    diff = H.relative_difference(weights, ref_weights)
    assert max(diff.values()) <= 1e-5, diff
    # the updates themselves (the weights barely move in two steps) agree tensor by tensor
    init = runs["init"][1]
    update_diff = H.relative_difference({k: weights[k] - init[k] for k in init},
                                        {k: ref_weights[k] - init[k] for k in init})
    assert max(update_diff.values()) <= 1e-3, update_diff
