"""Command lines derived from the config dataclasses: each tool's options, defaults and --help follow the fields."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import re
import subprocess
import sys
import typing
from dataclasses import dataclass, field
from typing import Literal

import pytest

from megatron_solo.config.cli import Command, Section, build, cli, nested, options
from megatron_solo.config.fielddoc import field_docs
from megatron_solo.errors import UserInputError
from tests.harness.paths import REPO

TOOLS = sorted(p.stem for p in (REPO / "tools").glob("*.py"))

# The spellings users have in scripts, each tool's before its options were derived; switches take no value.
SPELLINGS = {
    "pretrain": "--model --model-overrides --chat-tokens* --transformer-impl --fp8 --fp8-recipe --recipe --data "
                "--eval-data --eval-interval --eval-iters --seq-length --micro-batch-size --global-batch-size "
                "--train-steps --lr --min-lr --warmup-steps --tensor-parallel --pipeline-parallel --virtual-pipeline "
                "--sequence-parallel* --no-sequence-parallel* --no-distributed-optimizer* --fp32* --recompute* --seed --save --save-interval "
                "--init-from --tokenizer --allow-data-change* --tensorboard-dir --data-workers --max-drop-share "
                "--exit-after-steps",
    "evaluate": "--checkpoint --hf --tensor-parallel --pipeline-parallel --dtype --val-data --classify --class-names "
                "--caption-template --baseline-train --mcq --mcq-mode --template --caption-images --max-samples "
                "--max-side --batch-tokens --max-batch --mcq-max-new-tokens --caption-max-new-tokens --out --quiet*",
    "preprocess_data": "--kind --input --output --image-root --class-names --caption-template --tokenizer "
                       "--close-with-vision* --patch-size --max-side --max-aspect --image-format --image-quality "
                       "--shard-size --workers --max-length --fast-jpeg-decode* --holdout --holdout-seed --prefix "
                       "--quiet*",
    "convert_hf_to_megatron": "--hf --out --tp --pp --tensor-parallel --pipeline-parallel --tokenizer "
                              "--no-chat-tokens* --close-with-vision* --init-std --seed",
    "export_to_hf": "--checkpoint --out --format --model-config --tokenizer --dtype --max-shard-mb",
    "generate": "--model --image --prompt --template --plain* --max-new-tokens",
    "make_demo_data": "--out --text-limit",
}


def command(tool: str) -> Command:
    return importlib.import_module(f"tools.{tool}").COMMAND


def field_at(cls: type, path: str) -> dataclasses.Field:
    """The dataclass field at dotted ``path``, resolved here without the derivation's own walk."""
    *parents, name = path.split(".")
    for parent in parents:
        kind = typing.get_type_hints(cls)[parent]
        cls = next(a for a in typing.get_args(kind) or (kind,) if dataclasses.is_dataclass(a))
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def rendered(value) -> str:
    """How --help states a default value."""
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return "off"  # a switch's default is not to be given
    return json.dumps(value) if isinstance(value, dict) else str(value)


def test_every_tool_has_a_derived_command_line():
    assert set(TOOLS) == set(SPELLINGS)
    for tool in TOOLS:
        assert isinstance(command(tool), Command), tool


@pytest.mark.parametrize("tool", TOOLS)
def test_spellings_in_users_scripts_still_parse(tool):
    actions = command(tool).parser()._option_string_actions
    for spelling in SPELLINGS[tool].split():
        flag = spelling.rstrip("*")
        assert flag in actions, f"{tool}: {flag} is gone"
        assert (actions[flag].nargs == 0) == spelling.endswith("*"), f"{tool}: {flag} changed between switch and value"


@pytest.mark.parametrize("tool", TOOLS)
def test_parser_defaults_are_the_dataclass_defaults(tool):
    cmd = command(tool)
    by_dest = {o.dest: o for o in cmd.options()}
    for action in cmd.parser()._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.dest in by_dest, f"{tool}: {action.option_strings} is not a config field's option"
        if isinstance(action, argparse._StoreConstAction) and not isinstance(action.const, bool):
            continue  # a shortcut (--plain) for another option's value
        option = by_dest[action.dest]
        f = field_at(option.section.cls, option.path)
        if option.path in option.section.unset:
            assert action.default is None, (tool, option.path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            assert action.required, (tool, option.path)
        else:
            want = f.default_factory() if f.default is dataclasses.MISSING else f.default
            assert action.default == want and type(action.default) is type(want), (tool, option.path, action.default)


def _option_help(text: str, flag: str) -> str:
    """The help paragraph of ``flag`` in --help's text, whitespace folded."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"  (--[\w-]+[^,]*, )*{re.escape(flag)}\b", line))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("      ")), len(lines))
    return " ".join(" ".join(lines[start:end]).split())


@pytest.mark.parametrize("tool", TOOLS)
def test_help_lists_every_option_with_its_default(tool):
    cmd = command(tool)
    text = cmd.parser().format_help()
    for option in cmd.options():
        flag = option.flags()[0]
        said = _option_help(text, flag)
        if option.path in option.section.one_of:
            assert "(give one of" in said, said
        elif option.required:
            assert said.endswith("(required)"), said
        elif re.search(r"\bdefault\b", option.section.help.get(option.path, option.doc)):
            assert "default" in said, said  # the field's comment states its default in words
        elif option.path in option.section.unset:
            assert said.endswith(f"(default: {option.section.unset[option.path]})"), said
        else:
            f = field_at(option.section.cls, option.path)
            want = f.default_factory() if f.default is dataclasses.MISSING else f.default
            assert said.endswith(f"(default: {rendered(want)})"), (tool, said, want)


def test_help_runs_as_a_user_runs_it():
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "pretrain.py"), "--help"], capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    parser = command("pretrain").parser()
    parser.prog = "pretrain.py"
    assert proc.stdout == parser.format_help()


# ----------------------------------------------------------------------------- the derivation's rules
class Mode:
    pass


@dataclass
class Inner:
    """A nested config."""

    width: int = 4  # how wide
    # where the long story of depth is told,
    # over two lines
    depth: float | None = None


@dataclass
class Outer:
    """A config."""

    name: str  # what it is called
    inner: Inner = field(default_factory=Inner)
    kind: Literal["a", "b"] = "a"
    tags: list[str] = field(default_factory=list)  # 100% tags
    extra: dict = field(default_factory=dict)
    fast: bool = False  # go fast
    careful: bool = True  # be careful
    # --sloppy: not careful
    tidy: bool = field(default=True, metadata=cli("--sloppy"))
    steps: int = field(default=3, metadata=cli("--steps", "--n"))
    given: int | None = None  # what the recipe says
    auto: bool | None = None  # decided later unless given


def outer_command(**section) -> Command:
    return Command("test", Section(Outer, **section))


def test_field_docs_are_the_comments_beside_or_above():
    assert field_docs(Inner) == {"width": "how wide", "depth": "where the long story of depth is told, over two lines"}
    assert field_docs(Outer)["tidy"] == "--sloppy: not careful" and field_docs(Outer)["inner"] == ""


def test_options_follow_the_fields():
    parser = outer_command().parser()
    flags = {a.option_strings[0]: a for a in parser._actions if a.option_strings[0] != "-h"}
    assert list(flags) == ["--name", "--width", "--depth", "--kind", "--tags", "--extra", "--fast", "--no-careful",
                           "--sloppy", "--steps", "--given", "--auto", "--no-auto"]
    assert flags["--kind"].choices == ("a", "b") and flags["--tags"].nargs == "+" and flags["--name"].required
    assert flags["--steps"].option_strings == ["--steps", "--n"]
    help_text = parser.format_help()
    assert "tags (default: none)" in " ".join(help_text.split()).replace("100% ", "")
    assert "not careful (default: off)" in " ".join(help_text.split())
    assert "decided later unless given (default: none)" in " ".join(help_text.split())
    assert flags["--no-auto"].dest == flags["--auto"].dest == "auto" and flags["--no-auto"].nargs == 0


def test_parse_and_build():
    cmd = outer_command()
    values = cmd.parse(["--name", "x", "--width", "7", "--tags", "p", "q", "--extra", '{"k": 1}', "--fast",
                        "--no-careful", "--sloppy", "--n", "5"])
    built = build(Outer, values)
    assert built == Outer(name="x", inner=Inner(width=7), tags=["p", "q"], extra={"k": 1}, fast=True, careful=False,
                          tidy=False, steps=5)
    assert [build(Outer, cmd.parse(["--name", "x", *auto])).auto for auto in ([], ["--auto"], ["--no-auto"])] == [
        None, True, False]
    assert build(Outer, values, steps=9).steps == 9
    assert nested({"a.b": 1, "a.c.d": 2, "e": 3}, "a.") == {"b": 1, "c": {"d": 2}}
    with pytest.raises(TypeError, match="argument list"):
        cmd.parse(None)


def test_unset_options_are_left_out_and_say_what_applies():
    cmd = outer_command(unset={"given": "the recipe's"}, skip=("inner.depth",))
    assert "given" not in cmd.parse(["--name", "x"]) and cmd.parse(["--name", "x", "--given", "2"])["given"] == 2
    assert "what the recipe says (default: the recipe's)" in " ".join(cmd.parser().format_help().split())
    assert "inner.depth" not in {o.path for o in options(cmd.sections[0])}


@pytest.mark.parametrize("argv,message", [
    (["--name", "x", "--kind", "c"], "argument --kind: invalid choice: 'c'"),
    (["--name", "x", "--steps", "two"], "argument --steps/--n: invalid int value: 'two'"),
    (["--name", "x", "--extra", "["], "argument --extra: not JSON"),
    (["--name", "x", "--extra", "[]"], "argument --extra: expected a JSON object"),
    ([], "the following arguments are required: --name"),
])
def test_user_errors_are_one_line(argv, message):
    with pytest.raises(UserInputError, match=re.escape(message)) as info:
        outer_command().parse(argv)
    assert "\n" not in str(info.value)


def test_a_type_without_a_reading_is_refused_when_the_parser_is_made():
    @dataclass
    class Odd:
        mode: Mode = field(default_factory=Mode)

    with pytest.raises(TypeError, match="cli\\(parse=...\\)"):
        Command("odd", Section(Odd)).parser()
