"""examples/slurm/preprocess_array.sbatch on a real one-node Slurm: an array of 3 over real photos builds,
together, exactly the shards of a one-process run (same names, keys and bytes, held-out split included),
and writes one stats.json (rerunning finished or killed parts: tests/data/test_parts.py)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from megatron_solo.config.data import PreprocessConfig
from megatron_solo.data.preprocess import preprocess
from megatron_solo.data.shard_set import ShardSet
from tests.harness.data_sources import classification_folder
from tests.harness.paths import REPO
from tests.harness.slurm_cluster import SlurmCluster, slurm_available

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.skipif(not slurm_available(), reason="Slurm not installed (.ci/run installs it)"),
]

SCRIPT = str(REPO / "examples" / "slurm" / "preprocess_array.sbatch")


def _wait_array(cluster: SlurmCluster, job: str, timeout: float) -> None:
    """Wait until no task of array job ``job`` is pending or running."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %T"], env=cluster.env, capture_output=True,
                             text=True)
        if out.returncode == 0 and not out.stdout.strip():
            return
        time.sleep(1)
    raise TimeoutError(f"array job {job} not done after {timeout} s")


def _logs(folder, job: str) -> list[str]:
    return [(folder / f"solo-prep-{job}_{i}.out").read_text() for i in range(3)]


def _last_json(log: str) -> dict:
    """The stats the tool printed last in a task's log (its JSON object)."""
    return json.loads(log[log.rindex("\n{") + 1:])


def _files(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("shard-*")) if p.is_file()}


def test_array_of_three_equals_one_process_run(tmp_path, slurm_cluster):
    folder, names = classification_folder(tmp_path / "photos" / "train")
    args = ["--kind", "classification", "--input", str(folder), "--class-names", str(names), "--shard-size", "2",
            "--holdout", "3", "--max-skip-share", "1"]
    cluster = slurm_cluster
    job = cluster.sbatch(SCRIPT, *args, "--output", "shards", cwd=tmp_path, options=("--array=0-2",))
    _wait_array(cluster, job, timeout=400)
    logs = _logs(tmp_path, job)
    parts = [_last_json(log) for log in logs]
    assert sorted(p["part"] for p in parts) == ["0/3", "1/3", "2/3"], logs
    assert cluster.node_state() == "idle"  # not drained (the trap: COMPLETED with nothing done)
    shards = tmp_path / "shards"
    whole = tmp_path / "whole"
    preprocess(PreprocessConfig(kind="classification", inputs=[str(folder)], class_names=str(names), shard_size=2,
                                holdout=3, max_skip_share=1.0, output=str(whole), workers=0), progress=False,
               environ={})
    assert sum(p["shards"] for p in parts) == len(list(whole.glob("shard-*.tar")))  # each shard built once
    assert _files(shards) == _files(whole)  # record for record: same names, keys and bytes
    ours, theirs = (json.loads((f / "stats.json").read_text()) for f in (shards, whole))
    assert ours["samples"] == theirs["samples"] and ours["skipped"] == theirs["skipped"]
    assert ours["holdout"] == theirs["holdout"]
    assert len(ShardSet(str(shards))) == theirs["samples"]
