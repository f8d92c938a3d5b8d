"""Checkpoint benchmark: the training stall of one save, asynchronous vs synchronous, and the guard's cost.

Two runs of the same model on the same data in one invocation (one process each, CPU or GPU), identical but
for ``--async-save``, each saving every ``--save-interval`` steps. The stall of a save is the time the step
loop spends in the saver on its account: starting it (``CheckpointSaver.save``: the sharded state dict, the
plan, for async the host copy and the fork of the writer), the polls that find it written and finish it
(rename, ``latest``), and waiting for it. It is taken for the saves before the last step (the end of a run
always waits for its last write). Goal: async stalls at most 20% of sync.

The non-finite guard's cost per step: the time inside ``guard.check_step`` (the isfinite checks and its one
all-reduce) as a share of the step time, over the same runs' steps. Goal: under 1%.

Run: python benchmarks/bench_checkpoint.py [--hidden 512] [--layers 4] [--steps 8] [--save-interval 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository, for tests.harness

GOAL_ASYNC_SHARE, GOAL_GUARD_SHARE = 0.20, 0.01


def _timed(owner, name: str, sink: list[float]) -> None:
    """Replace ``owner.name`` by a wrapper that appends each call's wall seconds to ``sink``."""
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - start)

    setattr(owner, name, wrapper)


def _save_stalls(saver_cls) -> list[dict[str, float]]:
    """Wrap the saver: per save, the seconds of its start, of the polls and of the waits made on its account."""
    stalls: list[dict[str, float]] = []
    real = {name: getattr(saver_cls, name) for name in ("save", "poll", "wait")}
    in_save = [False]

    def timed(name):
        def call(self, *args, **kwargs):
            had, nested = self.pending, in_save[0]
            in_save[0] = nested or name == "save"
            start = time.perf_counter()
            try:
                out = real[name](self, *args, **kwargs)
            finally:
                in_save[0] = nested
            seconds = time.perf_counter() - start
            if name == "save":  # includes waiting for the previous write, if it was still in flight
                stalls.append({"save": seconds, "poll": 0.0, "wait": 0.0})
            elif had is not None and not nested:
                stalls[-1][name] += seconds
            return out
        return call

    for name in real:
        setattr(saver_cls, name, timed(name))
    return stalls


def bench_run(images: str, texts: str, save_dir: str, async_save: bool, args_json: str, out: str) -> None:
    """Worker (1 process): one training run; writes its per-save stalls, step times and guard times."""
    from megatron_solo.training import guard, step_loop
    from megatron_solo.training.checkpointing import CheckpointSaver
    from megatron_solo.training.loop import pretrain
    from tests.harness import training as T

    args = json.loads(args_json)
    stalls = _save_stalls(CheckpointSaver)
    guard_seconds: list[float] = []
    _timed(guard, "check_step", guard_seconds)
    steps: list[float] = []
    _timed(step_loop.StepLoop, "_train_step", steps)
    job = T.small_job(images, texts, save_dir, args["steps"], None)
    job = dataclasses.replace(
        job, model_overrides={"vocab_size": 33031, "hidden_size": args["hidden"], "num_layers": args["layers"],
                              "ffn_hidden_size": 4 * args["hidden"], "num_attention_heads": 8, "num_query_groups": 4},
        train=dataclasses.replace(job.train, save_interval=args["save_interval"], async_save=async_save,
                                  on_spike="off"))
    pretrain(job)
    Path(out).write_text(json.dumps({"stalls": stalls[:-1], "steps": steps, "guard": guard_seconds}))


def main() -> None:
    """Run the sync and the async run side by side and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--save-interval", type=int, default=3)
    args = parser.parse_args()
    from megatron_solo.platform import spawn
    from tests.harness import training as T

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images, texts = T.build_shards(root)
        results = {}
        for name, async_save in (("sync", False), ("async", True)):
            out = root / f"{name}.json"
            spawn(bench_run, 1, images, texts, str(root / name), async_save, json.dumps(vars(args)), str(out))
            results[name] = json.loads(out.read_text())
        size = sum(f.stat().st_size for f in (root / "sync").rglob("*") if f.is_file())
        size /= max(1, len([d for d in (root / "sync").iterdir() if d.name.startswith("iter_")]))
    _report(results, size, args)


def _report(results: dict, size: float, args) -> None:
    total = {n: [sum(x.values()) for x in results[n]["stalls"]] for n in ("sync", "async")}
    sync, asyn = statistics.median(total["sync"]), statistics.median(total["async"])
    print(f"model: solo-tiny widened to hidden {args.hidden}, {args.layers} layers; one checkpoint "
          f"{size / 2**20:.0f} MiB (weights, optimizer, RNG); a save every {args.save_interval} steps")
    for name in ("sync", "async"):
        parts = ", ".join(f"{k} {statistics.median(x[k] for x in results[name]['stalls']):.3f}"
                          for k in ("save", "poll", "wait"))
        print(f"{name}: stall per save, median of {len(total[name])}: {statistics.median(total[name]):.3f} s "
              f"({parts} s)")
    share = asyn / sync
    print(f"async / sync stall: {share:.3f} (goal <= {GOAL_ASYNC_SHARE}): "
          f"{'met' if share <= GOAL_ASYNC_SHARE else 'NOT met'}")
    steps = results["sync"]["steps"][1:] + results["async"]["steps"][1:]  # the first step builds caches
    guards = results["sync"]["guard"][1:] + results["async"]["guard"][1:]
    cost = statistics.median(guards) / statistics.median(steps)
    print(f"guard per step: {statistics.median(guards) * 1e3:.2f} ms of a {statistics.median(steps):.3f} s step: "
          f"{cost:.4f} (goal < {GOAL_GUARD_SHARE}): {'met' if cost < GOAL_GUARD_SHARE else 'NOT met'}")


if __name__ == "__main__":
    main()
