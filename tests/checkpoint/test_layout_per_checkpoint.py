"""Each checkpoint carries its own layout: every checkpoint of a save folder exports after a layout change."""

from __future__ import annotations

import shutil

import pytest

from tests.harness.ckpt_models import load_safetensors_dir
from tests.harness.ckpt_workers import resave
from tests.harness.worlds import run_world

# The shared TP2 PP2 import starts worker processes; the re-save and the exports run in this process.
pytestmark = [pytest.mark.multiprocess, pytest.mark.usefixtures("conversions_here")]


def test_a_save_folder_resumed_at_another_layout_exports_every_checkpoint(small_mistral_tp2pp2, tmp_path):
    from megatron_solo.checkpoint.train_state import read_train_state
    from megatron_solo.hf.exporter import export_checkpoint

    root = shutil.copytree(small_mistral_tp2pp2[0], tmp_path / "ckpt")  # the session's import, read only
    run_world(resave, 1, str(root), 1, 1)  # the run resumed at TP1 saves iter_1; solo_model.json now says TP1
    old_layout = read_train_state(root / "iter_0000000").layout
    assert (old_layout.tensor_parallel, old_layout.pipeline_parallel) == (2, 2)
    assert read_train_state(root / "iter_0000001").layout.tensor_parallel == 1
    old = export_checkpoint(root / "iter_0000000", tmp_path / "hf_tp2", progress=False)
    new = export_checkpoint(root / "iter_0000001", tmp_path / "hf_tp1", progress=False)
    a, b = load_safetensors_dir(old), load_safetensors_dir(new)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
