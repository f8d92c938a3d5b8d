"""sbatch on a real one-node Slurm: the CPU job trains from any directory, a signalled job checkpoints,
requeues itself and finishes, two jobs share the node, and the GPU scripts launch what they should."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.harness.paths import REPO
from tests.harness.slurm_cluster import slurm_available

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.skipif(not slurm_available(), reason="Slurm not installed (.ci/run installs it)"),
]

SLURM = REPO / "examples" / "slurm"
SCRIPT = str(SLURM / "cpu_smoke.sbatch")


@pytest.fixture(scope="module")
def cluster(slurm_cluster):
    """The session's Slurm daemons."""
    return slurm_cluster


@pytest.fixture(scope="module")
def shards(quickstart_shards):
    """Real quick-start shards."""
    return quickstart_shards


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


def _port(job: str) -> int:
    return 10000 + int(job) % 20000


@pytest.mark.parametrize("launcher", ["srun", "torchrun"])
def test_signalled_job_requeues_itself_and_finishes(cluster, shards, tmp_path, launcher):
    # Submitted from a folder that is not the checkout, with no --output: the script finds the
    # repo itself and writes its log in the submit directory.
    steps = 12
    if launcher == "srun":
        options, env = (), {}
    else:  # one task running torchrun with two workers, as pretrain_stage1_torchrun.sbatch does per node
        options, env = ("--ntasks=1", "--cpus-per-task=2"), {"SOLO_LAUNCHER": "torchrun", "SOLO_PROCS_PER_NODE": "2"}
    job = cluster.sbatch(SCRIPT, *_data_args(shards), "--train-steps", str(steps), "--save-interval", "1000",
                         "--save", "ckpt", cwd=tmp_path, options=options, env=env)
    out = tmp_path / f"solo-smoke-{job}.out"
    _wait_for(out, f"step 2/{steps}", timeout=240)
    cluster.signal(job, "USR1")  # what --signal=USR1@900 sends ahead of the time limit
    assert cluster.wait(job, timeout=400) == "COMPLETED", out.read_text()
    text = out.read_text()
    first, _, second = text.partition("requeueing job")
    assert second, text  # the stopped run requeued the job ...
    stopped = re.search(r"done: iteration (\d+), .*\(stopped early, checkpoint saved\)", first)
    assert stopped, text
    stopped_at = int(stopped.group(1))
    assert 2 <= stopped_at < steps, text
    if launcher == "torchrun":  # it handled USR1 and passed it on instead of dying of it
        assert "closing signal SIGUSR1" in first, text
    else:  # the two srun tasks formed one world
        assert "2 processes, layout TP1PP1DP2" in first, text
    assert f"repo {REPO}," in first and f"rendezvous {cluster.host}:{_port(job)}" in first, text
    # ... and the log was appended to, not overwritten: both runs are in it
    assert "restart 0," in first and "restart 1," in second, text
    assert f"resumed from ckpt at iteration {stopped_at}" in second, text
    assert f"step {stopped_at + 1}/{steps}" in second and f"done: iteration {steps}," in second, text
    assert "stopped early" not in second and second.count("requeueing") == 0, text
    # relative paths: the submit directory
    assert int((tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text()) == steps
    assert (tmp_path / "ckpt" / f"iter_{steps:07d}").is_dir()
    assert cluster.node_state() == "idle"  # not drained


def test_two_jobs_share_the_node_and_a_signalled_one_without_save_is_not_requeued(cluster, shards, tmp_path):
    # One task each, so both fit on the node's two cores at once; a fixed rendezvous port makes the
    # second one fail to listen. Job "a" has no --save: signalled, it stops and is not requeued.
    jobs, steps = {}, {"a": 40, "b": 2}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        jobs[name] = cluster.sbatch(SCRIPT, *_data_args(shards), "--train-steps", str(steps[name]),
                                    cwd=tmp_path / name, options=("--ntasks=1",))
    deadline, overlapped = time.time() + 120, False
    while time.time() < deadline and not overlapped:
        overlapped = all(cluster.job_state(j) == "RUNNING" for j in jobs.values())
        time.sleep(0.2)
    assert overlapped, "the two jobs never ran at the same time"
    logs = {name: tmp_path / name / f"solo-smoke-{job}.out" for name, job in jobs.items()}
    _wait_for(logs["a"], "step 2/40", timeout=240)
    cluster.signal(jobs["a"], "USR1")
    for name, job in jobs.items():
        assert cluster.wait(job, timeout=300) == "COMPLETED", logs[name].read_text()
        assert f"rendezvous {cluster.host}:{_port(job)}" in logs[name].read_text()
    stopped, done = logs["a"].read_text(), logs["b"].read_text()
    assert "stopped early" in stopped and "no --save was given: not requeueing" in stopped, stopped
    assert "restart 1," not in stopped and "requeueing job" not in stopped, stopped
    assert "done: iteration 2" in done and "requeueing" not in done, done
    assert _port(jobs["a"]) != _port(jobs["b"])


GPU_LAUNCHES = {
    "pretrain_stage1.sbatch": "srun --kill-on-bad-exit=1 ",
    "pretrain_stage1_torchrun.sbatch": "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 ",
}


def test_gpu_scripts_launch_from_any_directory(cluster, tmp_path):
    # No GPU here: override the GPU request and print the launch line instead of training. One task
    # each, so both scripts run side by side.
    jobs = {}
    for script in GPU_LAUNCHES:
        (tmp_path / script).mkdir()
        jobs[script] = cluster.sbatch(str(SLURM / script), cwd=tmp_path / script, env={"SOLO_DRY_RUN": "1"},
                                      options=("--gpus-per-node=0", "--ntasks-per-node=1", "--cpus-per-task=1"))
    for script, job in jobs.items():
        state = cluster.wait(job, timeout=120)
        logs = list((tmp_path / script).glob(f"*-{job}.out"))
        assert len(logs) == 1, (script, state, list((tmp_path / script).iterdir()))  # in the submit directory
        text = logs[0].read_text()
        assert state == "COMPLETED", (script, text)
        assert GPU_LAUNCHES[script] in text, (script, text)
        assert f"{REPO}/tools/pretrain.py --recipe stage1 --model solo-7b" in text, (script, text)
        assert f"rendezvous {cluster.host}:{_port(job)}" in text, (script, text)


def test_gpu_scripts_requeue_with_an_appended_log_and_a_long_enough_signal_lead():
    for script in ("pretrain_stage1.sbatch", "pretrain_stage1_torchrun.sbatch"):
        directives = re.findall(r"^#SBATCH (\S+)", (SLURM / script).read_text(), re.M)
        assert "--requeue" in directives and "--open-mode=append" in directives, (script, directives)
        output = next(d for d in directives if d.startswith("--output="))
        assert "/" not in output, (script, output)  # Slurm creates no folder for the log
        lead = int(next(d for d in directives if d.startswith("--signal=USR1@")).split("@")[1])
        assert lead >= 90 + 300, (script, lead)  # a 7B step (a minute or more) plus a save (minutes)


SETUP_ERRORS = {
    "repo": ({"SOLO_REPO": "/nonexistent"}, "solo: no megatron_solo checkout at '/nonexistent': set SOLO_REPO"),
    "python": ({"PYTHON": "/nonexistent/python"}, "solo: interpreter '/nonexistent/python' not found"),
}


def test_setup_errors_are_one_line_and_exit_2(cluster, tmp_path):
    jobs = {}
    for name, (env, _) in SETUP_ERRORS.items():  # submitted together: each fails at once
        (tmp_path / name).mkdir()
        jobs[name] = cluster.sbatch(SCRIPT, cwd=tmp_path / name, env=env)
    for name, job in jobs.items():
        state = cluster.wait(job, timeout=60)
        text = (tmp_path / name / f"solo-smoke-{job}.out").read_text()
        message = SETUP_ERRORS[name][1]
        assert state == "FAILED" and text.strip().splitlines() == [text.strip()] and message in text, (state, text)
        assert cluster.job_field(job, "ExitCode") in ("2:0", "GONE")
