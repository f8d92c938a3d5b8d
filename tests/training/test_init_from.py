"""--init-from in bf16: the first step trains the loaded weights, not the random ones the model was built with."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from megatron_solo.errors import UserInputError
from tests.harness import training as T
from tests.harness.paths import REPO, user_env
from tests.harness.worlds import run_world


@pytest.mark.slow
def test_init_from_in_bf16_trains_the_loaded_weights(tmp_path, world1, quickstart_shards):
    from tests.harness.guarded_run import weights_of

    images, texts = quickstart_shards
    stage_a, stage_b = str(tmp_path / "stage_a"), str(tmp_path / "stage_b")
    run_world(T.run_bf16_job, 1, images, texts, stage_a, 5, 2e-3, None)
    # Built from another seed, then loaded from stage A; a step this small leaves the weights as loaded.
    run_world(T.run_bf16_job, 1, images, texts, stage_b, 6, 1e-9, stage_a)
    run_world(weights_of, 1, images, texts, [stage_a, stage_b],
              [str(tmp_path / f"{name}.safetensors") for name in ("stage_a", "stage_b")])
    a, b = (load_file(tmp_path / f"{name}.safetensors") for name in ("stage_a", "stage_b"))
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        # The optimizer's fp32 copies must be taken from the loaded weights: stale copies would put
        # seed 6's initialisation back, off by the whole weight (std 0.02), not by a bf16 rounding.
        torch.testing.assert_close(b[key], a[key], rtol=1e-2, atol=1e-4, msg=key)


@pytest.mark.slow  # an HF model imported
def test_init_from_is_checked_against_the_model_before_it_is_built(tmp_path):
    from megatron_solo.config import ParallelConfig
    from megatron_solo.config.job import JobConfig
    from megatron_solo.hf.importer import import_hf
    from megatron_solo.training.startup import job_model_config
    from megatron_solo.vocab import default_tokenizer_path
    from tests.harness.ckpt_models import save_hf, small_hf_model

    hf = save_hf(small_hf_model("mistral", layers=2), tmp_path / "hf")
    import_hf(hf, tmp_path / "mg", ParallelConfig(), tokenizer=default_tokenizer_path(), progress=False)
    job = JobConfig(model="solo-small", init_from=str(tmp_path / "mg"))
    cfg = job_model_config(job)  # the checkpoint's model, not solo-small's
    assert (cfg.hidden_size, cfg.num_layers, cfg.transformer_impl) == (64, 2, "auto")
    with pytest.raises(UserInputError, match="field model.num_layers = 3 but .* stores 2 layers"):
        job_model_config(JobConfig(model="solo-small", init_from=str(tmp_path / "mg"),
                                   model_overrides={"num_layers": 3}))
    (tmp_path / "mg" / "solo_model.json").unlink()  # no description: the preset, checked against the tensors
    with pytest.raises(UserInputError, match="--model solo-small: field model.hidden_size/vocab_size = 256/"):
        job_model_config(job)


@pytest.mark.multiprocess
def test_a_failed_start_tears_its_process_world_down(tmp_path):
    script = (
        "import torch\n"
        "from megatron_solo.config.job import JobConfig\n"
        "from megatron_solo.training.loop import pretrain\n"
        "try:\n"
        f"    pretrain(JobConfig(model='solo-tiny', init_from={str(tmp_path / 'missing')!r}))\n"
        "except Exception as err:\n"
        "    print(type(err).__name__, torch.distributed.is_initialized(), err)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=str(REPO), env=user_env(PYTHONPATH=str(REPO)))
    assert out.stdout.split()[:2] == ["CheckpointError", "False"], (out.stdout, out.stderr[-2000:])
