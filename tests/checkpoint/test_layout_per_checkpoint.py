"""Each checkpoint carries its own layout: every checkpoint of a save folder exports after a layout change."""

from __future__ import annotations

import pytest

from megatron_solo.config import ParallelConfig
from megatron_solo.platform import spawn
from megatron_solo.vocab import default_tokenizer_path
from tests.harness.ckpt_models import load_safetensors_dir, save_hf, small_hf_model
from tests.harness.ckpt_workers import resave

pytestmark = pytest.mark.multiprocess


def test_a_save_folder_resumed_at_another_layout_exports_every_checkpoint(tmp_path):
    from megatron_solo.checkpoint.train_state import read_train_state
    from megatron_solo.hf.exporter import export_checkpoint
    from megatron_solo.hf.importer import import_hf

    root = tmp_path / "ckpt"
    hf = save_hf(small_hf_model("mistral", layers=2), tmp_path / "hf")
    import_hf(hf, root, ParallelConfig(tensor_parallel=2), tokenizer=default_tokenizer_path(), progress=False)
    spawn(resave, 1, str(root), 1, 1)  # the run resumed at TP1 saves iter_1; solo_model.json now says TP1
    assert read_train_state(root / "iter_0000000").layout.tensor_parallel == 2
    assert read_train_state(root / "iter_0000001").layout.tensor_parallel == 1
    old = export_checkpoint(root / "iter_0000000", tmp_path / "hf_tp2", progress=False)
    new = export_checkpoint(root / "iter_0000001", tmp_path / "hf_tp1", progress=False)
    a, b = load_safetensors_dir(old), load_safetensors_dir(new)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
