"""--init-from in bf16: the first step trains the loaded weights, not the random ones the model was built with."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from megatron_solo.platform import spawn
from tests.harness import training as T

pytestmark = pytest.mark.multiprocess


def test_init_from_in_bf16_trains_the_loaded_weights(tmp_path):
    images, texts = T.build_shards(tmp_path)
    stage_a, stage_b = str(tmp_path / "stage_a"), str(tmp_path / "stage_b")
    spawn(T.run_bf16_job, 1, images, texts, stage_a, 5, 2e-3, None)
    # Built from another seed, then loaded from stage A; a step this small leaves the weights as loaded.
    spawn(T.run_bf16_job, 1, images, texts, stage_b, 6, 1e-9, stage_a)
    for name in ("stage_a", "stage_b"):
        spawn(T.final_weights, 1, images, texts, str(tmp_path / name), str(tmp_path / f"{name}.safetensors"))
    a, b = (load_file(tmp_path / f"{name}.safetensors") for name in ("stage_a", "stage_b"))
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        # The optimizer's fp32 copies must be taken from the loaded weights: stale copies would put
        # seed 6's initialisation back, off by the whole weight (std 0.02), not by a bf16 rounding.
        torch.testing.assert_close(b[key], a[key], rtol=1e-2, atol=1e-4, msg=key)
