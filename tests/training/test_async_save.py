"""Asynchronous checkpoints: a stop and the end of a run wait for the write in flight; a SIGKILL during a
write resumes from the previous complete checkpoint. One rank's background write is slowed to make it so."""

from __future__ import annotations

import json
import os
import shlex
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


def test_a_usr1_stop_and_the_end_of_the_run_wait_for_the_write_in_flight(shards):
    root, (images, texts) = shards
    save = root / "usr1"
    # iter_2's write takes 3 s more and sends USR1 as it starts (step 3 waits for it to be sent): the run
    # stops after step 3, saving it too
    slow = {"iteration": 2, "on_rank": 0, "seconds": 3.0, "marker": str(root / "usr1_sent"), "usr1": True}
    first = _run(1, images, texts, save, 6, slow, root / "usr1_a.json", save_interval=2)
    assert first["preempted"] and first["iteration"] == 3
    assert first["latest"] == 3 and first["folders"] == ["iter_0000002", "iter_0000003"]
    slow = {"iteration": 6, "on_rank": 0, "seconds": 3.0, "marker": None, "usr1": False}
    second = _run(1, images, texts, save, 6, slow, root / "usr1_b.json", save_interval=2)
    assert second["resumed_from"] == 3 and second["iteration"] == 6 and not second["preempted"]
    assert second["latest"] == 6 and second["folders"] == [f"iter_000000{i}" for i in (2, 3, 4, 6)]


# One rank of the killed DP2 run, its rank and port from the environment: the ranks are started straight
# from a shell (no launcher process to start, and one process group to kill).
_KILLED_RANK = """
import os

import torch

from megatron_solo.platform import init_distributed, teardown
from tests.harness import guarded_run as G

if __name__ == "__main__":
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    init_distributed()
    try:
        G.run_async_job({images!r}, {texts!r}, {save!r}, 6, {slow!r}, {out!r}, {{"save_interval": 2}})
    finally:
        teardown()
"""


def _wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_sigkill_during_an_async_write_resumes_from_the_previous_checkpoint(shards):
    from megatron_solo.checkpoint.layout import latest_iteration
    from megatron_solo.platform import free_port

    root, (images, texts) = shards
    save, marker, log = root / "killed", root / "writing", root / "killed.log"
    # rank 1's write of iter_4 never ends; rank 0's ends at once: iter_4 must not become the latest
    slow = {"iteration": 4, "on_rank": 1, "seconds": 600.0, "marker": str(marker), "usr1": False}
    script = root / "killed_rank.py"
    script.write_text(textwrap.dedent(_KILLED_RANK.format(images=images, texts=texts, save=str(save), slow=slow,
                                                          out=str(root / "killed.json"))))
    # the shell returns as soon as either rank does, so a rank that fails is seen at once
    ranks = " & ".join(f"RANK={r} LOCAL_RANK={r} {shlex.quote(sys.executable)} {shlex.quote(str(script))}"
                       for r in range(2))
    with open(log, "w") as stdout:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        proc = subprocess.Popen(["bash", "-c", f"{ranks} & wait -n"], cwd=REPO, env=env, stdout=stdout,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: Path(f"{marker}.1").exists() or proc.poll() is not None, 400, "the write of iter_4")
        assert proc.poll() is None, log.read_text()[-3000:]
        _wait_for(lambda: "step 5/6" in log.read_text(), 200, "step 5 (training goes on during the write)")
        assert latest_iteration(save) == 2 and (save / "iter_0000004.partial").is_dir()
        assert not (save / "iter_0000004").exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    resumed = _run(2, images, texts, save, 6, None, root / "resumed.json", save_interval=2)
    assert resumed["resumed_from"] == 2 and resumed["iteration"] == 6 and len(resumed["losses"]) == 4
    assert resumed["latest"] == 6 and resumed["folders"] == ["iter_0000002", "iter_0000004", "iter_0000006"]
