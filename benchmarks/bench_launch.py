"""Starting a two-rank world: platform.spawn (ranks forked from a preloaded fork server) against
starting each rank with multiprocessing's spawn (every rank imports torch and megatron-core itself).

Both run the same worker (a barrier, then megatron-core's parallel state set up and torn down), the
same number of times, alternating; the first fork-server world, which starts the server, is shown
apart. Prints seconds per world and the ratio.

  python benchmarks/bench_launch.py [--worlds 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch.multiprocessing as mp

from megatron_solo.platform import launch


def worker() -> None:
    """A rank's start-up work: join the world and build megatron-core's groups."""
    from megatron_solo.config import ParallelConfig
    from megatron_solo.platform import init_parallel

    init_parallel(ParallelConfig(tensor_parallel=2))


def _spawned(world: int) -> None:
    mp.start_processes(launch._worker, args=(world, launch.free_port(), worker, (), launch._caller_context()),
                       nprocs=world, join=True, start_method="spawn")


def _timed(start) -> float:
    began = time.perf_counter()
    start()
    return time.perf_counter() - began


def main() -> None:
    """Time the two ways side by side and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, default=4, help="worlds started each way")
    args = parser.parse_args()
    first = _timed(lambda: launch.spawn(worker, 2))  # starts the fork server
    forked, spawned = [], []
    for _ in range(args.worlds):
        forked.append(_timed(lambda: launch.spawn(worker, 2)))
        spawned.append(_timed(lambda: _spawned(2)))
    result = {"worlds": args.worlds, "first_fork_server_world_s": round(first, 3),
              "fork_server_world_s": round(statistics.median(forked), 3),
              "spawned_world_s": round(statistics.median(spawned), 3),
              "spawned_over_fork_server": round(statistics.median(spawned) / statistics.median(forked), 1)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
