"""The device world: layout validation, CPU emulation on/off, RNG tracker streams."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from megatron_solo.config import ParallelConfig
from megatron_solo.platform import cpu_emulation, spawn
from megatron_solo.platform.distributed import pipeline_comm_settings, uses_cuda
from tests.harness import rng


def test_layout_must_divide_world():
    assert ParallelConfig(tensor_parallel=2, pipeline_parallel=2).data_parallel(8) == 2
    with pytest.raises(ValueError, match="not divisible"):
        ParallelConfig(tensor_parallel=2).data_parallel(3)
    with pytest.raises(ValueError, match="virtual pipeline"):
        ParallelConfig(virtual_pipeline=2).data_parallel(2)


def test_sequence_parallel_unset_is_on_with_tensor_parallelism_on_gpus_only(monkeypatch):
    from megatron_solo.platform import distributed

    def resolved(tp: int, asked: bool | None, gpu: bool) -> bool:
        monkeypatch.setattr(distributed, "uses_cuda", lambda: gpu)
        return distributed.resolve_sequence_parallel(ParallelConfig(tp, sequence_parallel=asked)).sequence_parallel

    assert [resolved(2, None, gpu) for gpu in (True, False)] == [True, False]  # CPU runs keep their numerics
    assert [resolved(2, asked, False) for asked in (True, False)] == [True, False]  # asked: as asked, CPU too
    assert [resolved(1, asked, True) for asked in (None, True)] == [False, False]  # nothing to split at TP1
    cfg = ParallelConfig(2, sequence_parallel=False)
    assert distributed.resolve_sequence_parallel(cfg) is cfg


cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="emulation is for machines without CUDA")


@cpu_only
def test_emulation_maps_cuda_requests_to_cpu():
    was = cpu_emulation.is_enabled()
    with cpu_emulation.emulated():
        t = torch.zeros(3, device=torch.cuda.current_device())
        assert t.device.type == "cpu"
        assert t.type() == "torch.cuda.FloatTensor"
        assert torch.ones(2).cuda().device.type == "cpu"
        assert torch.ones(2).to("cuda").device.type == "cpu"
        torch.cuda.manual_seed(5)
        a = torch.rand(3)
        torch.cuda.manual_seed(5)
        assert torch.equal(a, torch.rand(3))  # the emulated CUDA generator is the CPU one
    if not was:
        assert torch.ones(2).type() == "torch.FloatTensor"  # nothing left patched


def test_emulation_is_off_when_cuda_is_present(monkeypatch):
    was = cpu_emulation.is_enabled()
    cpu_emulation.disable()
    try:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        with pytest.raises(RuntimeError, match="must not be enabled"):
            cpu_emulation.enable()
        assert not cpu_emulation.is_enabled()
        assert uses_cuda()
        assert pipeline_comm_settings() == {"batch_p2p_comm": True}
    finally:
        monkeypatch.undo()
        if was:
            cpu_emulation.enable()


@cpu_only
def test_emulation_uses_unbatched_p2p_on_cpu():
    with cpu_emulation.emulated():
        assert not uses_cuda()
        assert pipeline_comm_settings() == {"batch_p2p_comm": False}


@pytest.mark.multiprocess
def test_rng_tracker_gives_distinct_masks_per_tp_rank(tmp_path):
    spawn(rng.dropout_masks, 2, str(tmp_path))
    r0 = json.loads((tmp_path / "tp0.json").read_text())
    r1 = json.loads((tmp_path / "tp1.json").read_text())
    assert r0["forked"] != r1["forked"]  # model-parallel stream: one per TP rank
    assert r0["shared"] == r1["shared"]  # default stream: the same on every TP rank
    assert r0["restored"] and r1["restored"]  # the fork hands the default state back


def test_srun_task_variables_become_the_process_group(monkeypatch):
    from megatron_solo.platform.distributed import env_from_slurm

    for key, value in dict(SLURM_PROCID="3", SLURM_STEP_NUM_TASKS="4", SLURM_LOCALID="1", MASTER_ADDR="node1",
                           RANK="0", WORLD_SIZE="1").items():  # RANK/WORLD_SIZE inherited from the shell
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    env_from_slurm()
    import os

    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("3", "4", "1")
    monkeypatch.setenv("RANK", "7")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")  # torchrun numbers its own workers
    env_from_slurm()
    assert os.environ["RANK"] == "7"
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    monkeypatch.delenv("MASTER_ADDR")
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        env_from_slurm()


@pytest.mark.multiprocess  # a child interpreter is what it checks
def test_one_process_world_leaves_the_environment_to_child_tools():
    import os
    import subprocess
    import sys

    code = ("import os\nfrom megatron_solo.platform.distributed import init_distributed\n"
            "print(init_distributed(), sorted(k for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK') if k in os.environ))")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "(0, 1) []"  # a later tool must not see RANK=0


def test_a_new_layout_destroys_the_groups_of_the_last(world1):
    """megatron-core's own destroy only forgets its groups; each keeps its gloo threads alive."""
    import torch.distributed as dist

    from megatron_solo.platform import init_parallel

    def counts() -> tuple[int, int]:  # (groups registered, this process's threads); no group held here
        return len(dist.distributed_c10d._world.pg_map), len(list(Path("/proc/self/task").iterdir()))

    init_parallel(ParallelConfig())
    first = counts()
    assert first[0] > 2  # megatron-core made its groups
    for _ in range(3):
        init_parallel(ParallelConfig())
        assert counts() == first
