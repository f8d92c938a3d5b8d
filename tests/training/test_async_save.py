"""Asynchronous checkpoints: a stop and the end of a run wait for the write in flight; a SIGKILL during a
write resumes from the previous complete checkpoint; signals to the whole job, during and between writes,
stop it saved. One rank's background write is slowed to make it so."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.multiprocess

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, world1, quickstart_shards):
    return tmp_path_factory.mktemp("async_save"), quickstart_shards


def _run(world, images, texts, save, steps, slow, out, **train) -> dict:
    """The async job on ``world`` ranks (one rank: in the pytest process, which gets the USR1)."""
    from tests.harness import guarded_run as G
    from tests.harness.worlds import run_world

    run_world(G.run_async_job, world, images, texts, str(save), steps, slow, str(out), train)
    return json.loads(Path(out).read_text())


def test_the_end_of_a_run_waits_for_the_write_in_flight(shards):
    root, (images, texts) = shards
    save = root / "end"
    # the last step's write takes 3 s more: the run returns only once it is the latest (a stop waits the same
    # way: the signals test below)
    slow = {"iteration": 2, "on_rank": 0, "seconds": 3.0, "marker": None, "usr1": False}
    run = _run(1, images, texts, save, 2, slow, root / "end.json", save_interval=2)
    assert run["iteration"] == 2 and not run["preempted"]
    assert run["latest"] == 2 and run["folders"] == ["iter_0000002"]


# One rank of a DP2 run, its rank and port from the environment: the ranks are started straight as processes
# of one group (no launcher process), as a job's tasks: the group is what Slurm and `kill -- -PGID` signal.
_RANK = """
import os

import torch

from megatron_solo.platform import init_distributed, teardown
from tests.harness import guarded_run as G

if __name__ == "__main__":
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    init_distributed()
    try:
        G.run_async_job({images!r}, {texts!r}, {save!r}, {steps}, {slow!r}, {out!r}, {train!r})
    finally:
        teardown()
"""


def _wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@contextlib.contextmanager
def _killed_on_error(procs: list[subprocess.Popen]):
    try:
        yield
    except BaseException:
        for proc in procs:
            proc.kill()
        raise


def _start_job(root: Path, name: str, images: str, texts: str, save: Path, slow: dict, train: dict):
    """Both ranks of a 12-step DP2 async job in a process group of their own; (processes, log, result file)."""
    from megatron_solo.platform import free_port

    script, log, out = root / f"{name}.py", root / f"{name}.log", root / f"{name}.json"
    script.write_text(textwrap.dedent(_RANK.format(images=images, texts=texts, save=str(save), steps=12, slow=slow,
                                                   out=str(out), train=train)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    procs: list[subprocess.Popen] = []
    with open(log, "w") as stdout, _killed_on_error(procs):
        for rank in range(2):
            group = procs[0].pid if procs else 0  # a new group, then the same one
            procs.append(subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=stdout,
                                          stderr=subprocess.STDOUT,
                                          env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, process_group=group))
    return procs, log, out


def _finished_job(root: Path, name: str, images: str, texts: str, save: Path, slow: dict, train: dict) -> dict:
    """Run a job as :func:`_start_job` does to its end; both ranks exit 0; rank 0's record of it."""
    procs, log, out = _start_job(root, name, images, texts, save, slow, train)
    try:
        codes = [proc.wait(timeout=400) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert codes == [0, 0], log.read_text()[-3000:]
    return json.loads(out.read_text())


def test_a_killed_job_resumes_and_signals_to_the_whole_job_stop_it_saved(shards):
    from megatron_solo.checkpoint.layout import latest_iteration

    root, (images, texts) = shards
    save, marker = root / "killed", root / "writing"
    # SIGKILL: rank 1's write of iter_4 never ends; rank 0's ends at once: iter_4 must not become the latest
    slow = {"iteration": 4, "on_rank": 1, "seconds": 600.0, "marker": str(marker), "usr1": False}
    procs, log, _ = _start_job(root, "killed", images, texts, save, slow, {"save_interval": 2})
    try:
        _wait_for(lambda: Path(f"{marker}.1").exists() or None not in [p.poll() for p in procs], 400,
                  "the write of iter_4")
        assert [p.poll() for p in procs] == [None, None], log.read_text()[-3000:]
        _wait_for(lambda: "step 5/12" in log.read_text(), 200, "step 5 (training goes on during the write)")
        assert latest_iteration(save) == 2 and (save / "iter_0000004.partial").is_dir()
        assert not (save / "iter_0000004").exists()
    finally:
        os.killpg(procs[0].pid, signal.SIGKILL)
        for proc in procs:
            proc.wait()
    # SIGUSR1 to the whole group during a write (sent by rank 1's writer of iter_4, which takes 2 s more; step 5
    # waits for it): the writers, the write-results queue and the loader workers live on, the write ends, and
    # the run stops after step 5 with that step saved too
    slow = {"iteration": 4, "on_rank": 1, "seconds": 2.0, "marker": str(root / "usr1_sent"), "group": "SIGUSR1",
            "usr1": False}
    during = _finished_job(root, "usr1_to_job", images, texts, save, slow, {"save_interval": 2})
    assert during["resumed_from"] == 2 and during["preempted"] and during["iteration"] == 5
    assert during["latest"] == 5 and during["folders"] == ["iter_0000002", "iter_0000004", "iter_0000005"]
    # SIGTERM to the whole group between writes, once iter_6 is the latest and before the save of iter_12
    slow = {"after_latest": 6, "group": "SIGTERM"}
    between = _finished_job(root, "term_to_job", images, texts, save, slow, {"save_interval": 6})
    assert between["resumed_from"] == 5 and between["preempted"] and 7 <= between["iteration"] < 12
    stopped = f"iter_{between['iteration']:07d}"
    assert between["latest"] == between["iteration"] and between["folders"][-2:] == ["iter_0000006", stopped]
