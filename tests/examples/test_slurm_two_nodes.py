"""pretrain_stage1.sbatch with -N 2 on a real two-node Slurm (each node in its own network namespace):
a tiny model at DP2 across the nodes, gloo over the veth link, stopped by USR1, requeued, resumed."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from megatron_solo.config import model_preset
from tests.harness.paths import REPO
from tests.harness.slurm_cluster import slurm_available
from tests.harness.slurm_two_nodes import TwoNodeSlurm, netns_unavailable
from tests.harness.worlds import run_world

_WHY_NOT = "Slurm not installed (.ci/run installs it)" if not slurm_available() else netns_unavailable()
pytestmark = [pytest.mark.multiprocess, pytest.mark.skipif(_WHY_NOT is not None, reason=str(_WHY_NOT))]

SCRIPT = str(REPO / "examples" / "slurm" / "pretrain_stage1.sbatch")
# The script's 7B run made tiny: solo-tiny at DP2 (one CPU task on each node), a few steps.
TINY = ("--model", "solo-tiny", "--chat-tokens", "--tensor-parallel", "1", "--seq-length", "512",
        "--global-batch-size", "2", "--lr", "1e-3", "--warmup-steps", "1", "--fp32", "--data-workers", "0")
STEPS = 6


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Slurm daemons and namespaces for this module."""
    c = TwoNodeSlurm(tmp_path_factory.mktemp("slurm2"))
    c.start()
    yield c
    c.stop()


def _init_checkpoint(work: Path, data: list[str]) -> None:
    """The script's --init-from ckpt/mistral-7b-solo: one step of the same tiny model, saved (in this process)."""
    from tools import pretrain

    run_world(pretrain.main, 1, [*TINY, *data, "--train-steps", "1", "--save", str(work / "ckpt" / "mistral-7b-solo")])


def _wait_for_step(cluster: TwoNodeSlurm, out: Path, step: int) -> dict[str, list[int]]:
    """Wait for ``step`` in the log; meanwhile note the rank of the trainer running on each node."""
    ranks: dict[str, list[int]] = {}
    deadline = time.time() + 480  # two trainers starting on a busy machine
    while time.time() < deadline:
        for node in ("n1", "n2"):
            ranks[node] = ranks.get(node) or cluster.task_ranks(node, "pretrain.py")
        if out.exists() and f"step {step}/{STEPS}" in out.read_text():
            return ranks
        time.sleep(0.3)
    raise TimeoutError(f"step {step} not in {out}:\n{out.read_text() if out.exists() else ''}")


def _node_lines(text: str, cluster: TwoNodeSlurm) -> list[str]:
    n1 = cluster.addr["n1"]
    return [f"solo: node 0 of 2: n1 ({n1}), rendezvous host n1 at {n1}",
            f"solo: node 1 of 2: n2 ({cluster.addr['n2']}), rendezvous host n1 at {n1}"]


def test_two_node_job_trains_at_dp2_requeues_and_resumes(cluster, tmp_path, quickstart_shards):
    images, texts = quickstart_shards
    data = ["--data", f"{images}:0.7", f"{texts}:0.3"]
    _init_checkpoint(tmp_path, data)
    link_before = cluster.link_bytes("n2")
    job = cluster.sbatch(SCRIPT, *TINY, *data, "--train-steps", str(STEPS), "--save-interval", "1000",
                         cwd=tmp_path, env={"OMP_NUM_THREADS": "1"},
                         options=("-N", "2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1"))
    out = tmp_path / f"solo-stage1-{job}.out"
    ranks = _wait_for_step(cluster, out, 2)
    assert ranks == {"n1": [0], "n2": [1]}, ranks  # rank 0 on the first node, rank 1 on the other
    cluster.signal(job, "USR1")  # reaches the ranks on both nodes; they agree, save and stop
    assert cluster.wait(job, timeout=400) == "COMPLETED", out.read_text()
    text = out.read_text()
    first, _, second = text.partition("requeueing job")
    assert second, text
    for run in (first, second):  # both allocations: two hosts, the rendezvous at n1's address
        assert all(line in run for line in _node_lines(run, cluster)), run
        assert f"rendezvous n1:{10000 + int(job) % 20000}" in run, run
        assert "2 processes, layout TP1PP1DP2" in run, run
    stopped = re.search(r"done: iteration (\d+), .*\(stopped early, checkpoint saved\)", first)
    assert stopped and 2 <= int(stopped.group(1)) < STEPS, text
    at = int(stopped.group(1))
    assert "restart 0," in first and "restart 1," in second, text
    assert f"resumed from ckpt/stage1 at iteration {at}" in second, text
    assert f"step {at + 1}/{STEPS}" in second and f"done: iteration {STEPS}," in second, text
    assert int((tmp_path / "ckpt" / "stage1" / "latest_checkpointed_iteration.txt").read_text()) == STEPS
    # DP2 exchanged gradients over n2's veth: at least the embedding's, in fp32, once per step
    tiny = model_preset("solo-tiny")
    assert cluster.link_bytes("n2") - link_before > STEPS * 4 * tiny.vocab_size * tiny.hidden_size
    assert cluster.node_states() == {"n1": "idle", "n2": "idle"}  # not drained
