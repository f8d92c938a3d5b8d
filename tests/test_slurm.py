"""sbatch on a real one-node Slurm: the CPU job trains, and a signalled job checkpoints and resumes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.harness import training as T
from tests.harness.slurm_cluster import SlurmCluster, slurm_available

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.skipif(not slurm_available(), reason="Slurm not installed (.ci/run installs it)"),
]

REPO = str(Path(__file__).resolve().parents[1])
SCRIPT = "examples/slurm/cpu_smoke.sbatch"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Slurm daemons for this module."""
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    c.start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Real quick-start shards."""
    return T.build_shards(tmp_path_factory.mktemp("slurm_data"))


def _data_args(shards) -> list[str]:
    images, texts = shards
    return ["--data", f"{images}:0.7", f"{texts}:0.3"]


def _wait_for(path: Path, text: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{text!r} not in {path} after {timeout} s:\n{path.read_text() if path.exists() else ''}")


def test_sbatch_job_trains(cluster, shards, tmp_path):
    out = tmp_path / "job.out"
    job = cluster.sbatch(SCRIPT, *_data_args(shards), "--train-steps", "3", "--save", str(tmp_path / "ckpt"),
                         cwd=REPO, output=out)
    assert cluster.wait(job, timeout=300) == "COMPLETED", out.read_text()
    text = out.read_text()
    assert "done: iteration 3" in text, text  # the trap: COMPLETED with empty output
    assert "2 processes, layout TP1PP1DP2" in text, text  # the two srun tasks formed one world
    assert (tmp_path / "ckpt" / "iter_0000003").is_dir()
    assert cluster.node_state() == "idle"  # not drained


def test_signalled_job_checkpoints_and_resumes(cluster, shards, tmp_path):
    ckpt = tmp_path / "ckpt"
    first = tmp_path / "first.out"
    job = cluster.sbatch(SCRIPT, *_data_args(shards), "--train-steps", "500", "--save-interval", "1000",
                         "--save", str(ckpt), cwd=REPO, output=first)
    _wait_for(first, "step 2/500", timeout=240)
    cluster.signal(job, "USR1")  # what --signal=USR1@600 sends ahead of the time limit
    assert cluster.wait(job, timeout=240) == "COMPLETED", first.read_text()
    assert "stopped early, checkpoint saved" in first.read_text(), first.read_text()
    stopped_at = int((ckpt / "latest_checkpointed_iteration.txt").read_text())
    assert stopped_at >= 2

    second = tmp_path / "second.out"
    job = cluster.sbatch(SCRIPT, *_data_args(shards), "--train-steps", str(stopped_at + 2), "--save", str(ckpt),
                         cwd=REPO, output=second)
    assert cluster.wait(job, timeout=300) == "COMPLETED", second.read_text()
    text = second.read_text()
    assert f"resumed from {ckpt} at iteration {stopped_at}" in text, text
    assert f"step {stopped_at + 1}/{stopped_at + 2}" in text and f"done: iteration {stopped_at + 2}" in text, text
    assert cluster.node_state() == "idle"
