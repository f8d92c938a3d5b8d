"""The lmms-eval launcher checks the ``solo`` model's arguments before lmms-eval starts: one line, exit 2."""

from __future__ import annotations

import pytest

from megatron_solo.errors import run_tool
from megatron_solo.evaluation import lmms


@pytest.mark.parametrize("model_args, message", [
    ("pretrained=/nonexistent", "error: /nonexistent: no such model directory"),
    ("pretrained=/nonexistent,checkpoint=/nonexistent", "give exactly one of pretrained=EXPORT_DIR and checkpoint="),
    ("pretrained", "solo model_args: 'pretrained' is not KEY=VALUE"),
    ("max_side=64", "give exactly one of pretrained=EXPORT_DIR and checkpoint=SAVE_DIR"),
    ("checkpoint={tmp}", "neither a checkpoint directory nor a save root"),
    ("pretrained={tmp},dtype=int8", "dtype must be one of float32, bfloat16, float16, got 'int8'"),
    ("pretrained={tmp}", "not a model written by tools/export_to_hf.py"),
])
def test_solo_model_arguments_are_one_line_before_lmms_eval_starts(model_args, message, tmp_path, capfd):
    argv = ["--model", "solo", "--model_args", model_args.format(tmp=tmp_path), "--tasks", "mme", "--limit", "1"]
    capfd.readouterr()
    code = run_tool(lmms.main, argv)
    err = capfd.readouterr().err
    # lmms-eval is not installed here: a check made after its start would end on that instead
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_each_run_of_a_config_file_is_checked(tmp_path, capfd):
    runs = tmp_path / "runs.yaml"
    runs.write_text(f"- {{model: solo, model_args: 'checkpoint={tmp_path}'}}\n- {{model: other}}\n")
    capfd.readouterr()
    code = run_tool(lmms.main, ["--config", str(runs), "--tasks", "mme"])
    err = capfd.readouterr().err
    assert code == 2 and "neither a checkpoint directory nor a save root" in err and err.count("\n") == 1, err
