"""Platform hardening: forked children of a trainer, device choice, ports, TP2 with one KV group."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from megatron_solo.platform import cpu_emulation, distributed, launch, spawn
from tests.harness.paths import REPO

# A trainer stand-in in a process group of its own: installs the preemption flag, starts
# megatron-core's write-results queue (a spawned manager) and forks a child the way its
# checkpoint writer does (multiprocessing "fork"), which forks one more. It prints the
# helpers' pids, signals its whole group as Slurm signals a job, reports, then waits to
# be killed.
_PARENT = """
import multiprocessing as mp, os, signal, sys, time
from megatron.core.dist_checkpointing.strategies import filesystem_async
from megatron_solo.checkpoint.write_results import ensure_write_results_queue
from megatron_solo.training.preemption import PreemptionFlag
def writer():  # megatron-core's async save: a forked caller process forks the writers
    grandchild = mp.get_context("fork").Process(target=time.sleep, args=(120,))
    grandchild.start()
    print(grandchild.pid, flush=True)
    ready.set()
    time.sleep(120)
flag = PreemptionFlag()
ensure_write_results_queue()
queue = filesystem_async._results_queue
ready = mp.get_context("fork").Event()
child = mp.get_context("fork").Process(target=writer)
child.start()
assert ready.wait(60)
print(child.pid, flush=True)
print(queue._manager._process.pid, flush=True)
for sig in (signal.SIGUSR1, signal.SIGTERM):
    os.killpg(0, sig)
    time.sleep(0.5)
    print(signal.Signals(sig).name, "parent flag", flag.received, "writer alive", child.is_alive(), flush=True)
    flag.received = False
queue.put("written")
print("queue", queue.get(timeout=10), flush=True)
flag.restore()
os.kill(os.getpid(), signal.SIGUSR1)  # a warning that comes after the run ended
time.sleep(0.5)
print("alive after the run", flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper counts as dead)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.slow  # a trainer stand-in in a process group of its own
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_helpers_of_a_trainer_outlive_the_job_signals_and_die_with_it():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    helpers = [int(proc.stdout.readline()) for _ in range(3)]  # writer's child, writer, results queue
    try:
        lines = [proc.stdout.readline().strip() for _ in range(4)]
        assert lines == ["SIGUSR1 parent flag True writer alive True", "SIGTERM parent flag True writer alive True",
                         "queue written", "alive after the run"], (lines, proc.stderr.read() if proc.poll() else "")
        assert all(_alive(pid) for pid in helpers)
        proc.kill()  # SIGKILL mid-save: no handler of ours runs
        proc.wait(timeout=10)
        deadline = time.time() + 10
        while any(_alive(pid) for pid in helpers) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in helpers), "a helper outlived its SIGKILLed trainer"
    finally:
        for pid in [proc.pid, *helpers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_device_follows_local_rank_modulo_visible_devices():
    assert [distributed.device_for_local_rank(r, 8) for r in range(8)] == list(range(8))
    assert [distributed.device_for_local_rank(r, 1) for r in range(4)] == [0, 0, 0, 0]  # --gpus-per-task=1
    assert distributed.device_for_local_rank(5, 4) == 1
    with pytest.raises(ValueError, match="no CUDA device"):
        distributed.device_for_local_rank(0, 0)


def test_srun_default_port_comes_from_the_job_id(monkeypatch):
    for key, value in dict(SLURM_PROCID="0", SLURM_STEP_NUM_TASKS="2", SLURM_LOCALID="0",
                           MASTER_ADDR="node1", SLURM_JOB_ID="123457").items():
        monkeypatch.setenv(key, value)
    for key in ("TORCHELASTIC_RUN_ID", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    distributed.env_from_slurm()
    assert os.environ["MASTER_PORT"] == str(10000 + 123457 % 20000) == "13457"
    monkeypatch.setenv("SLURM_JOB_ID", "123458")
    monkeypatch.delenv("MASTER_PORT")
    distributed.env_from_slurm()
    assert os.environ["MASTER_PORT"] == "13458"  # the next job on the node gets another port
    assert all(10000 <= distributed.slurm_master_port(j) < 32768 for j in (0, 19999, 20000, 10**9 + 7))


def test_distributed_does_not_import_launch():
    tree = ast.parse(Path(distributed.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert "megatron_solo.platform.launch" not in imported
    assert launch.free_port is distributed.free_port  # still importable from launch


class _AllocatesInBackward(torch.autograd.Function):
    """Like megatron-core's TP gather: its backward allocates on ``torch.cuda.current_device()``."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        out = torch.empty(grad.shape, dtype=grad.dtype, device=torch.cuda.current_device())
        return out.copy_(grad * 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="emulation is for machines without CUDA")
@pytest.mark.parametrize("how", ["tensor.backward", "autograd.backward", "autograd.grad"])
def test_emulation_covers_the_backward_pass(how):
    with cpu_emulation.emulated():
        x = torch.ones(3, requires_grad=True)
        y = _AllocatesInBackward.apply(x).sum()
        if how == "tensor.backward":
            y.backward()
            grad = x.grad
        elif how == "autograd.backward":
            torch.autograd.backward([y])
            grad = x.grad
        else:
            (grad,) = torch.autograd.grad(y, [x])
    assert torch.equal(grad, torch.full((3,), 2.0))


def train_tp2_one_query_group(images: str, texts: str, save_dir: str, out: str) -> None:
    """Worker (2 processes): solo-tiny with a single query group at TP2 with sequence parallelism, two steps."""
    from megatron_solo.config import ParallelConfig
    from megatron_solo.training.loop import pretrain
    from tests.harness import training as T

    job = T.small_job(images, texts, save_dir, 2, None)
    job = dataclasses.replace(job, parallel=ParallelConfig(tensor_parallel=2, sequence_parallel=True),
                              model_overrides={**job.model_overrides, "num_query_groups": 1})
    summary = pretrain(job)
    if summary.is_log_rank:
        Path(out).write_text(json.dumps({"losses": summary.losses, "iteration": summary.iteration}))


@pytest.mark.multiprocess
def test_tp2_trains_with_one_query_group_and_sequence_parallelism(tmp_path, quickstart_shards):
    images, texts = quickstart_shards
    out = tmp_path / "run.json"
    spawn(train_tp2_one_query_group, 2, images, texts, str(tmp_path / "ckpt"), str(out))
    run = json.loads(out.read_text())
    assert run["iteration"] == 2 and len(run["losses"]) == 2, run
    assert all(math.isfinite(x) for x in run["losses"]), run
