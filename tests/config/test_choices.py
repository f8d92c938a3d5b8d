"""An option's allowed values are stated once, as the Literal of its field: configs and command lines refuse alike."""

from __future__ import annotations

import importlib

import pytest

from megatron_solo.config.choices import check_choices, choices, literal_values
from megatron_solo.config.data import DataConfig
from megatron_solo.config.evaluation import EvalConfig
from megatron_solo.config.job import JobConfig
from megatron_solo.config.model import SoloModelConfig
from megatron_solo.config.train import OptimConfig, TrainConfig
from megatron_solo.errors import UserInputError
from tests.harness.tool_runs import run_here


@pytest.mark.parametrize("make, message", [
    (lambda: OptimConfig(decay_style="bogus"), "decay_style must be one of cosine, linear, constant, got 'bogus'"),
    (lambda: TrainConfig(on_nonfinite="ignore"), "on_nonfinite must be one of stop, skip, got 'ignore'"),
    (lambda: EvalConfig(hf="x", dtype="int8"), "dtype must be one of float32, bfloat16, float16, got 'int8'"),
    (lambda: EvalConfig(hf="x", template="markdown"), "template must be one of plain, chat, got 'markdown'"),
    (lambda: JobConfig(template="markdown"), "template must be one of plain, chat"),
    (lambda: SoloModelConfig(transformer_impl="apex"), "transformer_impl must be one of auto, te, local"),
    (lambda: DataConfig(overflow="wrap"), "overflow must be one of split, drop, got 'wrap'"),
])
def test_a_config_made_in_code_is_checked_against_its_literals(make, message):
    with pytest.raises(UserInputError, match=message):
        make()


def test_optional_literals_take_none():
    assert choices(EvalConfig, "template") == ("plain", "chat") and EvalConfig(hf="x").template is None
    check_choices(SoloModelConfig(fp8=None))


@pytest.mark.parametrize("tool, argv, message", [
    ("pretrain", ["--model", "solo-tiny", "--data", "x", "--decay-style", "bogus"],
     "argument --decay-style: invalid choice: 'bogus' (choose from 'cosine', 'linear', 'constant')"),
    ("pretrain", ["--model", "solo-tiny", "--data", "x", "--fp8", "e5m2"], "argument --fp8: invalid choice: 'e5m2'"),
    ("evaluate", ["--hf", "x", "--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
    ("evaluate", ["--hf", "x", "--mcq-mode", "guess"], "argument --mcq-mode: invalid choice: 'guess'"),
])
def test_the_command_lines_refuse_from_the_same_values(tool, argv, message, capfd):
    run = run_here(capfd, f"{tool}.py", *argv)
    assert run.returncode == 2 and message in run.stderr and run.stderr.count("\n") == 1, run.stderr


@pytest.mark.parametrize("tool", ["pretrain", "evaluate", "preprocess_data", "export_to_hf", "generate",
                                  "convert_hf_to_megatron", "make_demo_data"])
def test_no_tool_restates_the_choices_of_a_literal_field(tool):
    """Section(choices=) is for values owned above config/ (registries): never for a field with a Literal."""
    import typing

    command = importlib.import_module(f"tools.{tool}").COMMAND
    for section in command.sections:
        for path in section.choices:
            cls = section.cls
            *parents, name = path.split(".")
            for parent in parents:
                cls = typing.get_type_hints(cls)[parent]
            assert literal_values(typing.get_type_hints(cls)[name]) is None, (tool, path)
