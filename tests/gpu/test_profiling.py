"""--profile-steps on a GPU: the trace holds CUDA kernels and a CUDA memory snapshot of the same steps is written.

On the smoke run (no CUDA) the same window writes the trace alone.
"""

from __future__ import annotations

import json

import pytest
import torch

from megatron_solo.platform import uses_cuda
from megatron_solo.training.profiling import StepProfiler
from tests.gpu.checks import cuda_missing

pytestmark = pytest.mark.gpu


def test_a_profiled_step_on_the_gpu_writes_its_kernels_and_a_memory_snapshot(tmp_path):
    why = cuda_missing()
    if why:
        pytest.skip(why)
    device = torch.device("cuda") if uses_cuda() else torch.device("cpu")
    profiler = StepProfiler((2, 2), [0], str(tmp_path), rank=0)
    for step in (1, 2, 3):
        profiler.before_step(step)
        x = torch.randn(512, 512, device=device)
        (x @ x).sum().item()
        profiler.after_step(step)
    profiler.close()
    trace, *snapshots = profiler.written
    events = json.loads(trace.read_text())["traceEvents"]
    if not uses_cuda():
        assert snapshots == []
        return
    assert any(e.get("cat") == "kernel" for e in events), "no CUDA kernel in the trace"
    (snapshot,) = snapshots
    assert snapshot.name == "rank0_memory_steps_2-2.pickle" and snapshot.stat().st_size > 0
