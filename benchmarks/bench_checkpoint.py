"""Checkpoint benchmark: the training stall of one save, asynchronous vs synchronous, and the guard's cost.

Two runs of the same model on the same data in one invocation (one process each, CPU or GPU), identical but
for ``--async-save``, each saving every ``--save-interval`` steps. The stall of a save is the time the step
loop spends in the saver on its account: starting it (``CheckpointSaver.save``: the sharded state dict, the
plan, for async the host copy and the fork of the writer), the polls that find it written and finish it
(rename, ``latest``), and waiting for it. It is taken for the saves before the last step (the end of a run
always waits for its last write), each, and as the median from the third save on: megatron-core plans the
first two (the second checks the first's plan), a run's later saves reuse the plan. Goal: async stalls at most
20% of sync.

The non-finite guard's cost per step: the time inside ``guard.check_step`` (the isfinite checks and its one
all-reduce) as a share of the step time, over the same runs' steps. Goal: under 1%.

Host memory of one save (sync, then async) and one load per rank, at DP1, DP2 and TP2 (bf16, distributed
optimizer; each world saves once first, untimed, as a run's later saves find megatron-core's caches): the peak of
the PSS summed over the rank and every process it forks (megatron-core's writer and its workers), sampled in a
thread, above the rank's PSS before the save or load, as a share of the rank's own part of the state (the model
parameters it holds plus its data-parallel shard of the fp32 main parameters and Adam moments). A CPU keeps the
state itself in host memory, so the figure is what a save or load adds to it. Also per rank: the bytes of the
files it wrote, as a share of the same (on a GPU an asynchronous save copies that much to host memory first).
The DP2 world also loads the TP2 checkpoint and the DP1 world the DP2 one: loads at another layout. Goal: every
figure at most 1.5.

Run: python benchmarks/bench_checkpoint.py [--hidden 512] [--layers 4] [--steps 14] [--save-interval 3] [--bf16]
     [--memory-hidden 512] [--memory-layers 4] [--only stall|memory]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository, for tests.harness

GOAL_ASYNC_SHARE, GOAL_GUARD_SHARE, GOAL_MEMORY_SHARE = 0.20, 0.01, 1.5


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
                                  on_spike="off", bf16=args["bf16"]))
    pretrain(job)
    Path(out).write_text(json.dumps({"stalls": stalls[:-1], "steps": steps, "guard": guard_seconds}))


def _pss(pid: int) -> int:
    """Proportional set size of process ``pid`` in bytes (0 once it has ended)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo += [int(child) for child in f.read().split()]
        except OSError:
            continue
    return found


class PeakPss:
    """Samples the PSS of this process and its descendants in a thread; ``extra``: the peak above the start."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.base, self.peak = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _now(self) -> int:
        return sum(_pss(pid) for pid in _tree(os.getpid()))

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._now())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakPss:
        import gc

        gc.collect()
        self.base = self.peak = self._now()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._now())

    @property
    def extra(self) -> int:
        """Bytes above the PSS at the start."""
        return self.peak - self.base


def _own_share(chunks, optimizer) -> int:
    """Bytes of the model parameters this rank holds plus its shard of the fp32 main parameters and moments."""
    import torch

    model = sum(p.numel() * p.element_size() for chunk in chunks for p in chunk.parameters())
    main = 0
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        for group in opt.optimizer.param_groups:
            for p in group["params"]:
                state = [v for v in opt.optimizer.state[p].values() if torch.is_tensor(v) and v.dim() > 0]
                main += sum(t.numel() * t.element_size() for t in [p, *state])
    return model + main


def _written_by(ckpt: str, rank: int) -> int:
    """Bytes of the shard files rank ``rank`` wrote into checkpoint folder ``ckpt``."""
    return sum(f.stat().st_size for f in Path(ckpt).glob(f"__{rank}_*.distcp"))


def memory_run(name: str, tp: int, hidden: int, layers: int, root: str, other: str | None, out: str) -> None:
    """Worker: build the model and optimizer at TP ``tp`` (DP the rest), save twice (the second measured),
    load it back, and load ``other`` (a checkpoint of another layout); writes per-rank figures."""
    import torch

    from megatron_solo.checkpoint.optimizer_state import prime_optimizer_state
    from megatron_solo.checkpoint.state import TrainState, load_checkpoint
    from megatron_solo.config import ParallelConfig, TrainConfig, model_preset
    from megatron_solo.model.builder import solo_provider
    from megatron_solo.model.chunks import build_model_chunks
    from megatron_solo.platform import init_parallel
    from megatron_solo.training.checkpointing import CheckpointSaver
    from megatron_solo.training.ddp import wrap_ddp
    from megatron_solo.training.optimizer import build_optimizer

    parallel = ParallelConfig(tensor_parallel=tp)
    init_parallel(parallel, seed=1)
    cfg = model_preset("solo-tiny", vocab_size=33031, hidden_size=hidden, num_layers=layers,
                       ffn_hidden_size=4 * hidden, num_attention_heads=8, num_query_groups=4)
    chunks = wrap_ddp(build_model_chunks(solo_provider(cfg, parallel, bf16=True), parallel), parallel)
    train = TrainConfig(micro_batch_size=1, global_batch_size=2, seq_length=32, train_steps=10, bf16=True,
                        save_dir=os.path.join(root, name), async_save=True)
    optimizer = build_optimizer(chunks, train, parallel)
    prime_optimizer_state(optimizer)
    saver = CheckpointSaver(train)
    saver.save(TrainState(iteration=1), chunks, optimizer, None)  # the first: one-time start-up
    saver.wait()
    figures = {"share": _own_share(chunks, optimizer)}
    for iteration, key in ((2, "save_sync"), (3, "save")):
        saver.train = dataclasses.replace(train, async_save=key == "save")
        with PeakPss() as save:
            saver.save(TrainState(iteration=iteration), chunks, optimizer, None)
            saver.wait()
        figures[key] = save.extra
    figures["written"] = _written_by(saver.latest, torch.distributed.get_rank())
    with PeakPss() as load:
        load_checkpoint(train.save_dir, chunks, optimizer)
    figures["load"] = load.extra
    if other is not None:
        with PeakPss() as load_other:
            load_checkpoint(other, chunks, optimizer)
        figures["load_other"] = load_other.extra
    saver.close()
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, figures)
    if torch.distributed.get_rank() == 0:
        Path(out).write_text(json.dumps(gathered))


# (name, TP, world size, the world whose checkpoint it loads besides its own): TP2 first, whose checkpoint the
# DP2 world loads (TP2 -> TP1 DP2), then DP1, which loads the DP2 checkpoint (DP2 -> DP1)
MEMORY_WORLDS = (("TP2", 2, 2, None), ("DP2", 1, 2, "TP2"), ("DP1", 1, 1, "DP2"))


def bench_memory(root: Path, args) -> dict:
    """Run the memory worlds one after another; {world name: per-rank figures}."""
    from megatron_solo.platform import spawn

    results = {}
    for name, tp, size, other in MEMORY_WORLDS:
        out = root / f"memory_{name}.json"
        spawn(memory_run, size, name, tp, args.memory_hidden, args.memory_layers, str(root),
              str(root / other) if other else None, str(out))
        results[name] = json.loads(out.read_text())
    return results


def _report_memory(results: dict) -> None:
    names = {"save_sync": "save (sync)", "save": "save (async: the rank and its writer)", "load": "load",
             "load_other": "load at this layout of the checkpoint of "}
    for name, _, _, other in MEMORY_WORLDS:
        ranks = results[name]
        share = max(r["share"] for r in ranks)
        print(f"{name}: own share per rank {share / 2**20:.0f} MiB; peak host memory above the state, worst rank:")
        for key in ("save_sync", "save", "load", "load_other", "written"):
            if key not in ranks[0]:
                continue
            worst = max(r[key] / r["share"] for r in ranks)
            label = names.get(key, "bytes written (an async save's host copy on a GPU)")
            label += other if key == "load_other" else ""
            verdict = "met" if worst <= GOAL_MEMORY_SHARE else "NOT met"
            print(f"  {label}: {worst:.2f} x share (goal <= {GOAL_MEMORY_SHARE}): {verdict}")


def main() -> None:
    """Run the sync and the async run side by side, then the memory worlds, and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--save-interval", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="the stall runs in bf16 (the GPU default), not fp32")
    parser.add_argument("--memory-hidden", type=int, default=512)
    parser.add_argument("--memory-layers", type=int, default=4)
    parser.add_argument("--only", choices=("stall", "memory"), default=None)
    args = parser.parse_args()
    from megatron_solo.platform import spawn
    from tests.harness import training as T

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.only != "memory":
            images, texts = T.build_shards(root)
            results = {}
            for name, async_save in (("sync", False), ("async", True)):
                out = root / f"{name}.json"
                spawn(bench_run, 1, images, texts, str(root / name), async_save, json.dumps(vars(args)), str(out))
                results[name] = json.loads(out.read_text())
            size = sum(f.stat().st_size for f in (root / "sync").rglob("*") if f.is_file())
            size /= max(1, len([d for d in (root / "sync").iterdir() if d.name.startswith("iter_")]))
            _report(results, size, args)
        if args.only != "stall":
            _report_memory(bench_memory(root / "memory", args))


def _report(results: dict, size: float, args) -> None:
    total = {n: [sum(x.values()) for x in results[n]["stalls"]] for n in ("sync", "async")}
    # from the third save on, a save finds its plan cached (megatron-core checks it against the second)
    steady = {n: t[2:] or t for n, t in total.items()}
    print(f"model: solo-tiny widened to hidden {args.hidden}, {args.layers} layers, {'bf16' if args.bf16 else 'fp32'}; "
          f"one checkpoint "
          f"{size / 2**20:.0f} MiB (weights, optimizer, RNG); a save every {args.save_interval} steps")
    for name in ("sync", "async"):
        parts = ", ".join(f"{k} {statistics.median(x[k] for x in results[name]['stalls'][2:] or results[name]['stalls']):.3f}"
                          for k in ("save", "poll", "wait"))
        each = ", ".join(f"{t:.3f}" for t in total[name])
        print(f"{name}: stall per save: {each} s; from the third save on, median of {len(steady[name])}: "
              f"{statistics.median(steady[name]):.3f} s ({parts} s)")
    share = statistics.median(steady["async"]) / statistics.median(steady["sync"])
    every = statistics.median(total["async"]) / statistics.median(total["sync"])
    print(f"async / sync stall, from the third save on: {share:.3f} (goal <= {GOAL_ASYNC_SHARE}): "
          f"{'met' if share <= GOAL_ASYNC_SHARE else 'NOT met'}; over every save: {every:.3f}")
    steps = results["sync"]["steps"][1:] + results["async"]["steps"][1:]  # the first step builds caches
    guards = results["sync"]["guard"][1:] + results["async"]["guard"][1:]
    cost = statistics.median(guards) / statistics.median(steps)
    print(f"guard per step: {statistics.median(guards) * 1e3:.2f} ms of a {statistics.median(steps):.3f} s step: "
          f"{cost:.4f} (goal < {GOAL_GUARD_SHARE}): {'met' if cost < GOAL_GUARD_SHARE else 'NOT met'}")


if __name__ == "__main__":
    main()
