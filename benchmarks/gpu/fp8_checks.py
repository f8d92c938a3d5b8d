"""FP8 training against bf16, and an FP8 checkpoint resumed (benchmarks/gpu/run.sh part 4).

A small SOLO (4 layers, width 512) trains a few hundred steps on packed image + text data whose
text can be learned (``mix.learnable_pack``), once in bf16 and once in FP8 (TE spec, ``fp8``
hybrid, the delayed recipe unless ``--recipe``), from the same initial weights and data. Goal:
the FP8 loss at the end (mean of the last 20 steps) within 2% of bf16's. The FP8 run saves a
checkpoint half-way (weights, distributed-optimizer state, schedule, RNG and TE's FP8 scaling
state in ``_extra_state``); a fresh process resumes it and must give the next steps' losses of
the uninterrupted run.

``--cpu-smoke``: a few steps of a tiny model on the CPU, where neither TE nor FP8 exists: both
legs run the local spec in bf16, so only the script's logic is checked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mix import learnable_pack, micro_batch  # noqa: E402
from scratch import scratch_folder  # noqa: E402

CURVE_TOL = 0.02  # FP8 final loss vs bf16's, relative (the goal)
RESUME_TOL = 1e-3  # resumed vs uninterrupted losses, relative (deterministic kernels asked for)
RESUME_STEPS = 10
_DATA: dict[int, list[dict]] = {}


def settings(smoke: bool) -> dict:
    """Shapes and lengths of the runs."""
    if smoke:
        return dict(seq=512, micro=2, steps=8, model=dict(num_layers=2, hidden_size=64, num_attention_heads=4,
                                                          num_query_groups=2, ffn_hidden_size=128))
    # Every FP8 GEMM dimension a multiple of 16 (TE's requirement): 2 x 1024 tokens, width 512, FFN 1536.
    return dict(seq=1024, micro=2, steps=250, model=dict(num_layers=4, hidden_size=512, num_attention_heads=8,
                                                         num_query_groups=2, ffn_hidden_size=1536))


def step_data(step: int, seq: int, micro: int) -> list[dict]:
    """The two micro-batches of ``step`` (the same in every run; generated once per process)."""
    if step not in _DATA:
        g = torch.Generator().manual_seed(10_000 + step)
        _DATA[step] = [micro_batch([learnable_pack(seq, g) for _ in range(micro)]) for _ in range(2)]
    return _DATA[step]


def build(fp8: str | None, recipe: str, smoke: bool, steps: int):
    """(chunks, optimizer, scheduler) of the small SOLO, TE spec (local on the smoke run)."""
    from megatron_solo.config import ParallelConfig, TrainConfig, model_preset
    from megatron_solo.config.train import OptimConfig
    from megatron_solo.model.builder import solo_provider
    from megatron_solo.model.chunks import build_model_chunks
    from megatron_solo.platform import init_parallel
    from megatron_solo.training.ddp import wrap_ddp
    from megatron_solo.training.optimizer import build_optimizer, build_scheduler

    s = settings(smoke)
    cfg = model_preset("solo-small", **s["model"], transformer_impl="local" if smoke else "te",
                       fp8=None if smoke else fp8, fp8_recipe=recipe, fp8_amax_history_len=16)
    parallel = ParallelConfig(use_distributed_optimizer=True)
    init_parallel(parallel, seed=11)
    torch.manual_seed(11)
    train = TrainConfig(micro_batch_size=s["micro"], global_batch_size=2 * s["micro"], seq_length=s["seq"],
                        train_steps=steps, bf16=True,
                        optim=OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=max(1, steps // 10)))
    chunks = wrap_ddp(build_model_chunks(solo_provider(cfg, parallel, bf16=True), parallel), parallel)
    optimizer = build_optimizer(chunks, train, parallel)
    return chunks, optimizer, build_scheduler(optimizer, train)


def run_steps(chunks, optimizer, scheduler, steps: range, smoke: bool) -> list[float]:
    """Losses of ``steps`` training steps."""
    from megatron_solo.training.forward_step import solo_forward_step
    from megatron_solo.training.step import train_step

    s = settings(smoke)
    losses = []
    for step in steps:
        result = train_step(solo_forward_step, [iter(step_data(step, s["seq"], s["micro"]))], chunks, optimizer,
                            scheduler, num_microbatches=2, seq_length=s["seq"], micro_batch_size=s["micro"])
        losses.append(result.loss)
    return losses


def curves(work: str, recipe: str, smoke: bool, steps: int, result_file: str) -> None:
    """Spawned: the bf16 and the FP8 run from the same initial weights; the FP8 one saves half-way."""
    from megatron_solo.checkpoint.state import TrainState, load_checkpoint, save_checkpoint

    out: dict = {"recipe": recipe, "steps": steps}
    init = os.path.join(work, "init")
    for name, fp8 in (("bf16", None), ("fp8", "hybrid")):
        t0 = time.perf_counter()
        chunks, optimizer, scheduler = build(fp8, recipe, smoke, steps)
        if name == "bf16":
            save_checkpoint(init, TrainState(iteration=0), chunks)
        else:
            load_checkpoint(init, chunks, load_rng=False)
            optimizer.reload_model_params()  # the fp32 main copies follow the loaded bf16 weights
        half = steps // 2
        losses = run_steps(chunks, optimizer, scheduler, range(half), smoke)
        if name == "fp8":
            save_checkpoint(os.path.join(work, "fp8_run"), TrainState(iteration=half), chunks, optimizer, scheduler)
        losses += run_steps(chunks, optimizer, scheduler, range(half, steps), smoke)
        out[name] = {"losses": losses, "wall_s": round(time.perf_counter() - t0, 1)}
        del chunks, optimizer, scheduler
        Path(result_file).write_text(json.dumps(out))
        print(name, "first/last loss", losses[0], losses[-1], flush=True)


def resume(work: str, recipe: str, smoke: bool, steps: int, result_file: str) -> None:
    """Spawned (a fresh process): resume the FP8 checkpoint and run the next steps."""
    from megatron_solo.checkpoint.state import load_checkpoint

    chunks, optimizer, scheduler = build("hybrid", recipe, smoke, steps)
    state = load_checkpoint(os.path.join(work, "fp8_run"), chunks, optimizer, scheduler)
    end = min(state.iteration + RESUME_STEPS, steps)
    losses = run_steps(chunks, optimizer, scheduler, range(state.iteration, end), smoke)
    Path(result_file).write_text(json.dumps({"from": state.iteration, "losses": losses}))


def _guarded_spawn(fn, *args) -> str | None:
    from megatron_solo.platform import spawn

    try:
        spawn(fn, 1, *args)
    except Exception as exc:  # keep what the worker wrote before it failed
        return f"{type(exc).__name__}: {exc}"[-2000:]
    return None


def main() -> None:
    """Parse arguments, run both curves and the resume, write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--work", help="scratch folder, new or empty (default: a new one under the system's temp folder)")
    ap.add_argument("--recipe", default="delayed", help="fp8_recipe: delayed, tensorwise, blockwise (mxfp8: Blackwell)")
    ap.add_argument("--steps", type=int, default=None, help="steps per run (default 250; smoke 8)")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU, both legs bf16")
    args = ap.parse_args()
    os.environ.setdefault("NVTE_ALLOW_NONDETERMINISTIC_ALGO", "0")  # so a resume can repeat a run exactly
    steps = args.steps or settings(args.cpu_smoke)["steps"]
    work = scratch_folder(args.work, "solo_fp8_checks_")
    t0 = time.perf_counter()
    results: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                     "fp8_leg": "bf16 local spec (cpu smoke)" if args.cpu_smoke else f"TE FP8 hybrid, {args.recipe}"}
    err = _guarded_spawn(curves, str(work), args.recipe, args.cpu_smoke, steps, str(work / "curves.json"))
    if err:
        results["curves_error"] = err
    if (work / "curves.json").is_file():
        results.update(json.loads((work / "curves.json").read_text()))
    if "fp8" in results and "bf16" in results:
        end = lambda losses: sum(losses[-20:]) / len(losses[-20:])  # noqa: E731
        bf16_end, fp8_end = end(results["bf16"]["losses"]), end(results["fp8"]["losses"])
        results["curve"] = {"bf16_end": bf16_end, "fp8_end": fp8_end, "rel_diff": abs(fp8_end - bf16_end) / bf16_end,
                            "bf16_start": results["bf16"]["losses"][0]}
        learned = bf16_end < 0.8 * results["curve"]["bf16_start"]  # else the comparison says nothing
        # a few smoke steps learn nothing: the smoke run checks the script, it judges no curve
        results["curve"]["ok"] = None if args.cpu_smoke else results["curve"]["rel_diff"] <= CURVE_TOL and learned
        err = _guarded_spawn(resume, str(work), args.recipe, args.cpu_smoke, steps, str(work / "resume.json"))
        if err:
            results["resume_error"] = err
        if (work / "resume.json").is_file():
            got = json.loads((work / "resume.json").read_text())
            start = got["from"]
            want = results["fp8"]["losses"][start:start + RESUME_STEPS]
            diff = max(abs(a - b) / abs(b) for a, b in zip(got["losses"], want))
            results["resume"] = {"from": start, "resumed": got["losses"], "uninterrupted": want, "max_rel_diff": diff,
                                 "ok": diff <= RESUME_TOL}
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    summary = {k: v for k, v in results.items() if k not in ("bf16", "fp8")}
    print("fp8", json.dumps(summary, default=str)[:2000], flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
