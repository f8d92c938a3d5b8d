"""The one-GPU speed table for SOLO on megatron-core (run by benchmarks/gpu/run.sh).

Training-step timing of a solo-7b-width model with the distributed optimizer, packed sequences
of 8192 (and 32768) tokens, a realistic image/text mix (tests/harness/mix.py), side by side for
each ``--impls`` entry: ``local`` (local spec, bf16, our packed attention), ``te`` (Transformer
Engine spec, bf16, thd attention), ``te-fp8`` (TE, FP8 hybrid) and ``peer`` (the plain
transformers loop, peer.py): tokens/s, MFU against 989 TFLOP/s dense bf16 (FP8 too, so the
figures compare), peak memory. Each timing runs in a fresh process. The correctness checks
are pytest tests in tests/gpu/.

``--smoke`` (alias ``--cpu-smoke``) runs the same code on the CPU with tiny shapes; the TE entries
are recorded as skipped there. Every entry names its implementation, a crash included, and the first
TE timing runs with ``NVTE_DEBUG=1 NVTE_DEBUG_LEVEL=1`` so the attention backend TE picked is recorded
(``te_attention_backend``): the report fails an unfused fallback at this width.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(os.path.dirname(HERE))]  # peer.py and report.py, and the repository
from report import te_backends  # noqa: E402

from megatron_solo.config import ParallelConfig, TrainConfig, model_preset  # noqa: E402
from megatron_solo.config.train import OptimConfig  # noqa: E402
from megatron_solo.platform import (  # noqa: E402
    current_device,
    init_distributed,
    init_parallel,
    resolve_sequence_parallel,
)
from tests.harness.mix import attention_keys, make_pack, micro_batch  # noqa: E402

PEAK_TFLOPS = 989.0
MIN_RUN_S = 20  # a timing started with less time left than this could not finish
# Makes TE log the attention backend it picks (report.te_backends reads the line)
TE_DEBUG_ENV = {"NVTE_DEBUG": "1", "NVTE_DEBUG_LEVEL": "1"}


def sync() -> None:
    """Wait for the GPU (no-op on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def model_flops(cfg, seq_tokens: int, keys: int, n_patches: int) -> float:
    """Training FLOPs (forward + backward, no recompute) of one pack."""
    h, layers = cfg.hidden_size, cfg.num_layers
    kv = cfg.num_query_groups * cfg.kv_channels
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * cfg.ffn_hidden_size  # q, o, k, v, SwiGLU
    dense = 6 * seq_tokens * (layers * per_layer + h * cfg.padded_vocab_size(1))
    dense += 6 * n_patches * cfg.patch_dim * h
    attention = layers * 12 * h * keys  # QK^T and AV, causal per document, x3 for training
    return float(dense + attention)


def model_config(seq: int, layers: int, impl: str, smoke: bool, backend: str, fp8_recipe: str):
    """solo-7b width (tiny on the smoke run) with ``layers`` layers in ``impl``'s layer spec and precision."""
    overrides = dict(num_layers=layers, max_position_embeddings=max(seq, 32768), packed_attention=backend,
                     transformer_impl="te" if impl.startswith("te") else "local")
    if impl == "te-fp8":
        overrides.update(fp8="hybrid", fp8_recipe=fp8_recipe)
    if smoke:
        overrides.update(hidden_size=128, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=256)
    return model_preset("solo-7b", **overrides)


def time_training(seq: int, layers: int, steps: int, microbatches: int, smoke: bool, backend: str,
                  impl: str = "local", fp8_recipe: str = "delayed") -> dict:
    """Median step time of one implementation's training step (megatron-core schedule, or the peer loop)."""
    cfg = model_config(seq, layers, impl, smoke, backend, fp8_recipe)
    g = torch.Generator().manual_seed(seq)
    packs = [make_pack(seq, g) for _ in range(microbatches)]
    keys = sum(attention_keys(p["cu_seqlens"], cfg.sliding_window) for p in packs)
    patches = sum(p["patches"].shape[0] for p in packs)
    vision_tokens = sum(int((p["tokens"] >= 32000).sum()) for p in packs)
    micro = [micro_batch([p]) for p in packs]
    if impl == "peer":
        step, params = _peer_stepper(cfg, micro)
    else:
        step, params = _megatron_stepper(cfg, seq, microbatches, micro)
    times, losses = [], []
    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    for i in range(steps + 2):
        sync()
        t0 = time.perf_counter()
        losses.append(step())
        sync()
        if i >= 2:  # two warm-up steps: compilation, cuDNN plans, FP8 scaling history
            times.append(time.perf_counter() - t0)
    step_time = statistics.median(times)
    flops = model_flops(cfg, seq * microbatches, keys, patches)
    return {
        "impl": impl, "seq": seq, "layers": layers, "microbatches": microbatches, "step_time_s": step_time,
        "tokens_per_s": seq * microbatches / step_time, "tflops_per_s": flops / step_time / 1e12,
        "mfu": flops / step_time / 1e12 / PEAK_TFLOPS, "vision_token_share": vision_tokens / (seq * microbatches),
        "losses": losses, "attention_backend": {"local": backend, "peer": "transformers sdpa"}.get(impl, "te"),
        "fp8_recipe": fp8_recipe if impl == "te-fp8" else None,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "params_b": params / 1e9,
    }


def _megatron_stepper(cfg, seq: int, microbatches: int, micro: list[dict]):
    """A closure running one SoloModel training step, and the parameter count."""
    from megatron_solo.model.builder import solo_provider
    from megatron_solo.model.chunks import build_model_chunks
    from megatron_solo.training.ddp import wrap_ddp
    from megatron_solo.training.forward_step import solo_forward_step
    from megatron_solo.training.optimizer import build_optimizer, build_scheduler
    from megatron_solo.training.step import train_step

    # One GPU: TP1, where the training rule (resolve_sequence_parallel, as pretrain applies it) leaves sequence
    # parallelism off; a layout with TP > 1 would take it on here as a training run does.
    parallel = resolve_sequence_parallel(ParallelConfig(use_distributed_optimizer=True))
    init_parallel(parallel, seed=1)
    train = TrainConfig(micro_batch_size=1, global_batch_size=microbatches, seq_length=seq, train_steps=100,
                        bf16=True, optim=OptimConfig(lr=1e-5, warmup_steps=0))
    chunks = wrap_ddp(build_model_chunks(solo_provider(cfg, parallel, bf16=True), parallel), parallel)
    optimizer = build_optimizer(chunks, train, parallel)
    scheduler = build_scheduler(optimizer, train)

    def step() -> float:
        return train_step(solo_forward_step, [iter(micro)], chunks, optimizer, scheduler,
                          num_microbatches=microbatches, seq_length=seq, micro_batch_size=1).loss

    return step, sum(p.numel() for c in chunks for p in c.parameters())


def _peer_stepper(cfg, micro: list[dict]):
    """A closure running one step of the transformers peer, and the parameter count."""
    from peer import build_peer, peer_step

    device = current_device()
    model, proj, optimizer = build_peer(cfg, device)
    return (lambda: peer_step(model, proj, optimizer, micro, device)), sum(
        p.numel() for p in [*model.parameters(), *proj.parameters()])


def guarded(results: dict, name: str, fn, *args) -> object:
    """Run one check, recording its result or its error without stopping the others."""
    t0 = time.perf_counter()
    try:
        results[name] = fn(*args)
    except Exception as exc:  # keep going: one failure must not hide the other figures
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
    results[name + "_wall_s"] = time.perf_counter() - t0
    print(name, json.dumps(results[name], default=str)[:1500], flush=True)
    return results[name]


def time_in_subprocess(args, seq: int, layers: int, impl: str, timeout: float, te_debug: bool = False) -> dict:
    """Run one timing in a fresh process, so an out-of-memory failure leaves nothing behind.

    ``te_debug``: run it with TE's attention logging and record the backend TE names.
    """
    import subprocess

    out_file = os.path.join(args.scratch, f"one_{seq}_{layers}_{impl}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--scratch", args.scratch, "--one", f"{seq},{layers},{impl}",
           "--microbatches", str(args.microbatches), "--steps", str(args.steps), "--backend", args.backend,
           "--fp8-recipe", args.fp8_recipe]
    if args.smoke:
        cmd.append("--smoke")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(TE_DEBUG_ENV if te_debug else {})
    where = {"impl": impl, "seq": seq, "layers": layers}
    try:
        proc = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True, env=env)
    except subprocess.TimeoutExpired:
        return {**where, "error": f"timed out after {timeout:.0f} s (the part's deadline)"}
    result = {**where, "error": f"exit {proc.returncode}", "stderr": proc.stderr[-2000:]}
    if os.path.isfile(out_file):
        with open(out_file) as f:
            result = {**where, **json.load(f)}
    if te_debug:
        result["te_attention_backend"] = ", ".join(te_backends(proc.stderr)) or "not logged"
    return result


def run_one(args) -> None:
    """Child process: one timing, written as JSON."""
    seq, layers, impl = args.one.split(",")
    init_distributed()
    result: dict = {}
    guarded(result, "r", time_training, int(seq), int(layers), args.steps, args.microbatches, args.smoke,
            args.backend, impl, args.fp8_recipe)
    with open(os.path.join(args.scratch, f"one_{seq}_{layers}_{impl}.json"), "w") as f:
        json.dump(result["r"], f, default=str)


def unavailable(impl: str) -> str | None:
    """Why ``impl`` cannot run on this machine (None when it can)."""
    from megatron_solo.model.specs import transformer_engine_status

    usable, why = transformer_engine_status()
    if impl.startswith("te") and not usable:
        return f"Transformer Engine is not usable here: {why}"
    return None


def main() -> None:
    """Parse arguments, run the checks, write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_results.json"),
                    help="JSON file to write")
    ap.add_argument("--scratch", default="/tmp/solo_gpu_speed", help="folder for the per-run files")
    ap.add_argument("--smoke", "--cpu-smoke", action="store_true", help="tiny shapes on the CPU")
    ap.add_argument("--impls", nargs="+", default=["te", "te-fp8", "local", "peer"],
                    choices=["local", "te", "te-fp8", "peer"])
    ap.add_argument("--layers", type=int, nargs="+", default=[8], help="layer counts to try, largest first")
    ap.add_argument("--seqs", type=int, nargs="+", default=[8192])
    ap.add_argument("--backend", default="auto", help="packed attention of the local spec")
    ap.add_argument("--fp8-recipe", default="delayed")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after two warm-up steps)")
    ap.add_argument("--deadline", type=float, default=300.0,
                    help="seconds by which every timing ends (one left running then is stopped and recorded)")
    ap.add_argument("--microbatches", type=int, default=8, help="micro-batches per optimizer step")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.makedirs(args.scratch, exist_ok=True)
    if args.one:
        run_one(args)
        return
    start = time.perf_counter()
    results = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
    }

    def save() -> None:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1, default=str)

    te_debug = True  # the first TE timing logs TE's attention backend choice
    for seq in [256] if args.smoke else args.seqs:
        for impl in args.impls:
            for layers in [2] if args.smoke else args.layers:
                name = f"train_seq{seq}_{impl}_L{layers}"
                left = args.deadline - (time.perf_counter() - start)
                why = unavailable(impl) or ("deadline" if left < MIN_RUN_S else None)
                if why:
                    results[name] = {"impl": impl, "seq": seq, "layers": layers, "skipped": why}
                    print(name, results[name], flush=True)
                    save()
                    break
                debug = te_debug and impl.startswith("te")
                te_debug = te_debug and not debug
                r = guarded(results, name, time_in_subprocess, args, seq, layers, impl, left, debug)
                if "error" in r and "impl" not in r:  # the runner itself failed: the row still names the run
                    results[name] = r = {"impl": impl, "seq": seq, "layers": layers, **r}
                save()
                if "error" not in r:
                    break  # the largest layer count that fits
    save()

if __name__ == "__main__":
    main()
