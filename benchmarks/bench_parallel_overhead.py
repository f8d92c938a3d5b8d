"""CPU step time of a small megatron-core GPT at TP1 vs TP2 vs PP2 (same global batch), as ratios.

Shows what the CPU emulation of CUDA and gloo cost: TP2 and PP2 run two processes on
the same cores, so on this 2-core machine a ratio near 1.0 means the communication
and emulation overhead is small next to the compute.

  python benchmarks/bench_parallel_overhead.py [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from megatron_solo.config import ParallelConfig, TrainConfig, model_preset
from megatron_solo.config.train import OptimConfig
from megatron_solo.platform import init_parallel, spawn

SEQ, GLOBAL_BATCH, VOCAB = 512, 8, 4096


def _batches(step: int) -> list[dict]:
    g = torch.Generator().manual_seed(step)
    toks = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ + 1), generator=g)
    return [dict(tokens=t[None, :-1], labels=t[None, 1:], position_ids=torch.arange(SEQ)[None],
                 loss_mask=torch.ones(1, SEQ)) for t in toks]


def worker(tp: int, pp: int, steps: int, out: str) -> None:
    """Time ``steps`` training steps at (tp, pp); rank 0 writes the step times."""
    from megatron.core import parallel_state as ps

    from megatron_solo.model.chunks import build_model_chunks
    from megatron_solo.model.gpt import build_gpt
    from megatron_solo.training.ddp import wrap_ddp
    from megatron_solo.training.forward_step import text_forward_step
    from megatron_solo.training.optimizer import build_optimizer, build_scheduler
    from megatron_solo.training.step import train_step

    parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp)
    dp = init_parallel(parallel, seed=1)
    cfg = model_preset("solo-small", vocab_size=VOCAB, vpatch_token_id=VOCAB - 1)
    train = TrainConfig(micro_batch_size=1, global_batch_size=GLOBAL_BATCH, seq_length=SEQ, train_steps=100,
                        bf16=False, optim=OptimConfig(lr=1e-4, warmup_steps=0))
    chunks = wrap_ddp(build_model_chunks(lambda pre, post, vp: build_gpt(cfg, parallel, pre, post, vp), parallel),
                      parallel)
    opt = build_optimizer(chunks, train, parallel)
    sched = build_scheduler(opt, train)
    nmb = train.num_microbatches(dp)
    r = ps.get_data_parallel_rank()
    times = []
    for step in range(steps + 1):
        mine = _batches(step)[r * nmb:(r + 1) * nmb]
        t0 = time.perf_counter()
        train_step(text_forward_step, [iter(mine)], chunks, opt, sched, num_microbatches=nmb, seq_length=SEQ,
                   micro_batch_size=1)
        times.append(time.perf_counter() - t0)
    if torch.distributed.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(times[1:], f)  # the first step warms up


def main() -> None:
    """Run the three layouts one after another and print medians and ratios."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, tp, pp, world in (("TP1", 1, 1, 1), ("TP2", 2, 1, 2), ("PP2", 1, 2, 2)):
            out = os.path.join(tmp, f"{name}.json")
            spawn(worker, world, tp, pp, args.steps, out)
            results[name] = statistics.median(json.load(open(out)))
    base = results["TP1"]
    print(f"small GPT (solo-small shape, vocab {VOCAB}), seq {SEQ}, global batch {GLOBAL_BATCH}, fp32, CPU")
    for name, t in results.items():
        print(f"{name}: median step {t:.3f} s  ratio to TP1 {t / base:.2f}x")


if __name__ == "__main__":
    main()
