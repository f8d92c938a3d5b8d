"""Every tool: a user error is one line on stderr and exit 2 (no traceback); internal errors keep theirs.

The conversion tools start their own workers, so under a launcher (torchrun, srun) they refuse at once.
"""

from __future__ import annotations

import pytest

from megatron_solo.checkpoint import CheckpointError
from megatron_solo.errors import UserInputError, launcher_variable, run_tool
from megatron_solo.hf.workers import run_workers
from megatron_solo.vocab import default_tokenizer_path
from tests.harness.ckpt_models import save_hf, small_hf_model
from tests.harness.ckpt_tools import one_line, run_cli
from tests.harness.ckpt_workers import raise_in_worker
from tests.harness.tool_runs import run_here


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A small random Mistral (4 heads, 2 KV heads) in safetensors."""
    return save_hf(small_hf_model("mistral", layers=2), tmp_path_factory.mktemp("tools") / "hf")


# ----------------------------------------------------------------------------- run_tool itself
def test_run_tool_user_error_is_one_line_and_internal_error_keeps_its_traceback(capsys):
    def user(argv):
        raise CheckpointError("ck/iter_1: no such checkpoint directory\n(second line)")

    assert run_tool(user) == 2
    err = capsys.readouterr().err
    assert err == "error: ck/iter_1: no such checkpoint directory (second line)\n"

    def internal(argv):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_tool(internal)


def test_launcher_variables_are_recognised():
    assert launcher_variable({}) is None
    assert launcher_variable({"TORCHELASTIC_RUN_ID": "x"}) == "TORCHELASTIC_RUN_ID=x"
    assert launcher_variable({"WORLD_SIZE": "2"}) == "WORLD_SIZE=2"
    assert launcher_variable({"SLURM_STEP_NUM_TASKS": "1"}) is None  # one srun task starts its own workers fine
    assert launcher_variable({"SLURM_STEP_NUM_TASKS": "4"}) == "SLURM_STEP_NUM_TASKS=4"


@pytest.mark.multiprocess
def test_user_error_inside_a_worker_keeps_its_class_and_message():
    with pytest.raises(CheckpointError, match=r"^bad/iter_0000001: shard missing$"):
        run_workers(raise_in_worker, 1, "bad/iter_0000001: shard missing")
    with pytest.raises(Exception) as info:  # an internal error stays one (torch's ProcessRaisedException)
        run_workers(raise_in_worker, 1, "")
    assert not isinstance(info.value, UserInputError) and "RuntimeError" in str(info.value)


# ----------------------------------------------------------------------------- the tools
@pytest.mark.multiprocess  # the real entry points, each in a process of its own
@pytest.mark.parametrize("tool,env", [
    ("convert_hf_to_megatron.py", {"TORCHELASTIC_RUN_ID": "abc", "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}),
    ("export_to_hf.py", {"RANK": "1", "WORLD_SIZE": "2"}),
    ("export_to_hf.py", {"SLURM_STEP_NUM_TASKS": "2"}),
])
def test_conversion_tools_refuse_to_run_under_a_launcher(tool, env, tmp_path):
    proc = run_cli(tool, "--hf" if tool.startswith("convert") else "--checkpoint", tmp_path, "--out", tmp_path / "o",
                 env=env, timeout=60)
    one_line(proc, "starts its own worker processes", "not under torchrun")
    assert not (tmp_path / "o").exists()


def test_convert_user_errors(hf_dir, tmp_path, capfd):
    one_line(run_here(capfd, "convert_hf_to_megatron.py", "--hf", tmp_path / "nowhere", "--out", tmp_path / "o"),
             "nowhere/config.json: not found")
    one_line(run_here(capfd, "convert_hf_to_megatron.py", "--hf", hf_dir, "--out", tmp_path / "o", "--tp", "3",
                      "--tokenizer", default_tokenizer_path()),
             "field 'num_attention_heads' = 4 is not divisible by tensor_parallel 3")
    one_line(run_here(capfd, "convert_hf_to_megatron.py", "--hf", hf_dir, "--out", tmp_path / "o", "--tp", "two"),
             "argument --tensor-parallel/--tp: invalid int value: 'two'")
    assert not (tmp_path / "o" / "iter_0000000").exists()


def test_convert_refuses_pickle_weights(hf_dir, tmp_path, capfd):
    """A HF folder with only pytorch_model.bin (pickle) is refused: import reads safetensors only."""
    import json

    import torch

    from tests.harness.ckpt_models import load_safetensors_dir

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps(json.loads((hf_dir / "config.json").read_text())))
    torch.save(load_safetensors_dir(hf_dir), legacy / "pytorch_model.bin")
    one_line(run_here(capfd, "convert_hf_to_megatron.py", "--hf", legacy, "--out", tmp_path / "o",
                      "--tokenizer", default_tokenizer_path()),
              "neither model.safetensors nor model.safetensors.index.json found (only safetensors)")


def test_export_user_errors(tmp_path, capfd):
    one_line(run_here(capfd, "export_to_hf.py", "--checkpoint", tmp_path / "nowhere", "--out", tmp_path / "o"),
             "nowhere: no such checkpoint directory")
    (tmp_path / "iter_0000005.partial").mkdir()
    one_line(run_here(capfd, "export_to_hf.py", "--checkpoint", f"{tmp_path}/iter_0000005.partial/", "--out",
                      tmp_path / "o"), "an unfinished checkpoint")
    one_line(run_here(capfd, "export_to_hf.py", "--checkpoint", tmp_path, "--out", tmp_path / "o", "--format", "gguf"),
             "argument --format: invalid choice: 'gguf'")
    assert not (tmp_path / "o").exists()


def test_generate_user_errors(tmp_path, capfd):
    # the real entry point once; the rest in this process
    one_line(run_cli("generate.py", "--model", tmp_path / "nowhere", "--prompt", "hi"), "nowhere: no such model")
    (tmp_path / "config.json").write_text("{}")
    one_line(run_here(capfd, "generate.py", "--model", tmp_path, "--prompt", "hi"),
             "not a model written by tools/export_to_hf.py")
    one_line(run_here(capfd, "generate.py", "--model", tmp_path, "--prompt", "hi", "--template", "alpaca"),
             "argument --template: invalid choice: 'alpaca'")


def test_make_demo_data_user_errors(tmp_path, capfd):
    (tmp_path / "file").write_text("x")
    one_line(run_cli("make_demo_data.py", "--out", tmp_path / "file"), "is a file, not a folder")
    one_line(run_here(capfd, "make_demo_data.py", "--out", tmp_path / "o", "--text-limit", "0"),
             "argument --text-limit: expected a positive integer, got '0'")
    one_line(run_here(capfd, "make_demo_data.py", "--out", tmp_path / "n", "--scenes", "-3"),
             "argument --scenes: expected a positive integer, got '-3'")
    assert not (tmp_path / "n").exists()  # refused before any source is written
    one_line(run_here(capfd, "make_demo_data.py"), "the following arguments are required: --out")
