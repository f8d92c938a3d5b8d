"""Command lines derived from the config dataclasses: a field, stated once, is an option.

A field ``max_side: int = 1024  # longest image side`` becomes ``--max-side`` with type int, default
1024 and the help "longest image side (default: 1024)": the flag is the field's name with dashes, the
type, choices (``Literal``) and default are the field's, the help is its comment (``fielddoc``). The
fields of a nested dataclass are options of their own (``JobConfig.parallel.tensor_parallel`` ->
``--tensor-parallel``). A spelling other than ``--field-name`` is stated on the field with :func:`cli`;
what one tool alone decides (choices owned by a package above config/, fields it does not take,
defaults that depend on a recipe) by its :class:`Section`.

Booleans are switches: one False by default is set by ``--name``; one True by default is cleared by
its flag (``--no-name`` unless the field names another, e.g. ``--fp32``); one None by default (``bool | None``:
decided at run time unless given) is a pair, ``--name`` and ``--no-name``. Lists take one or more words
(``--input A B``). A dict is a JSON object. Errors are :class:`ToolArgumentParser`'s: one line, exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from megatron_solo.config.fielddoc import field_docs
from megatron_solo.errors import ToolArgumentParser, UserInputError

_KEY = "cli"  # the field-metadata key of a Spelling


@dataclass(frozen=True)
class Spelling:
    """A field's command-line spelling where it differs from the derived one (made by :func:`cli`)."""

    flags: tuple[str, ...] = ()
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    repeat: bool = False
    shortcuts: tuple[tuple[str, Any], ...] = ()


def cli(*flags: str, metavar: str | None = None, parse: Callable[[str], Any] | None = None, repeat: bool = False,
        shortcuts: Mapping[str, Any] | None = None) -> dict[str, Spelling]:
    """Field metadata, ``field(default=..., metadata=cli("--save"))``: how the field reads on command lines.

    ``flags``: its spellings, replacing ``--field-name`` (older spellings users have in scripts follow the
    first); ``parse``: reads one word (a UserInputError or ValueError is the one-line argument error);
    ``repeat``: a list is given as ``--x A --x B``; ``shortcuts``: flags that set a fixed value.
    """
    return {_KEY: Spelling(flags, metavar, parse, repeat, tuple((shortcuts or {}).items()))}


@dataclass(frozen=True)
class Section:
    """One dataclass on a tool's command line, and what that tool alone decides about its fields.

    Fields are named by dotted paths from ``cls`` (``parallel.tensor_parallel``); a parsed value's key is
    ``prefix`` + path. ``skip`` / ``only``: the fields left off / the only ones taken; ``choices``: for
    choices owned above config/; ``required``: options to insist on although the field has a default;
    ``unset``: field -> what applies when its option is absent (e.g. "the recipe's"): the option's
    default is then None and an absent one is left out of the parse; ``help``: the wording for a field
    whose comment is not written for a command line; ``one_of``: exactly one of these must be given.
    """

    cls: type
    prefix: str = ""
    skip: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    choices: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    unset: Mapping[str, str] = field(default_factory=dict)
    help: Mapping[str, str] = field(default_factory=dict)
    one_of: tuple[str, ...] = ()

    def takes(self, path: str) -> bool:
        """Whether the field at ``path`` (or a field inside it) is on the command line."""
        if path in self.skip:
            return False
        return not self.only or any(o == path or o.startswith(path + ".") for o in self.only)


@dataclass(frozen=True)
class Option:
    """One field as an option: where its value goes and how it is read."""

    section: Section
    path: str
    field: dataclasses.Field
    type: Any  # the field's type, Optional removed
    doc: str

    @property
    def dest(self) -> str:
        """The key of its value in a parse."""
        return self.section.prefix + self.path

    @property
    def spelling(self) -> Spelling:
        """The field's :func:`cli` metadata, or the derived spelling."""
        return self.field.metadata.get(_KEY, Spelling())

    @property
    def default(self) -> Any:
        """The option's default: the field's, None where ``unset``, MISSING where the field has none."""
        if self.path in self.section.unset:
            return None
        return field_default(self.field)

    @property
    def required(self) -> bool:
        """Whether the option must be given (its field has no default, or the section insists)."""
        return self.default is dataclasses.MISSING or self.path in self.section.required

    def flags(self) -> tuple[str, ...]:
        """Its spellings: the field's :func:`cli` flags, else ``--field-name`` (``--no-field-name`` to clear it)."""
        if self.spelling.flags:
            return self.spelling.flags
        name = self.field.name.replace("_", "-")
        return (f"--no-{name}",) if self.type is bool and self.default is True else (f"--{name}",)


def field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default (a fresh one from its factory), or ``dataclasses.MISSING``."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def options(section: Section) -> list[Option]:
    """The section's fields that are options, nested dataclasses walked, in field order."""
    return list(_walk(section, section.cls, ""))


def _walk(section: Section, cls: type, prefix: str):
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        if not section.takes(path):
            continue
        kind = _without_none(hints[f.name])
        if dataclasses.is_dataclass(kind):
            yield from _walk(section, kind, path + ".")
        else:
            yield Option(section, path, f, kind, docs.get(f.name, ""))


def _without_none(kind: Any) -> Any:
    """``X`` for ``X | None``; other types unchanged."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return kind


def _json_object(text: str) -> dict:
    """A JSON object given on the command line."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserInputError(f"not JSON ({err})") from None
    if not isinstance(value, dict):
        raise UserInputError("expected a JSON object")
    return value


def _reader(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` as an argparse type whose refusal message is the one argparse prints."""
    if parse in (int, float, str):  # argparse words their refusals itself ("invalid int value: 'x'")
        return parse

    def read(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:  # UserInputError included
            raise argparse.ArgumentTypeError(str(err)) from None

    read.__name__ = getattr(parse, "__name__", "value")
    return read


def _value_kwargs(option: Option) -> dict[str, Any]:
    """add_argument's type, nargs/action and choices for a non-boolean field."""
    kind, kwargs = option.type, {}
    if typing.get_origin(kind) is list:
        (kind,) = typing.get_args(kind)
        if option.spelling.repeat:
            kwargs["action"] = "append"
        else:
            kwargs["nargs"] = "+"
    if typing.get_origin(kind) is Literal:
        kwargs["choices"] = typing.get_args(kind)
        kind = type(kwargs["choices"][0])
    if option.path in option.section.choices:
        kwargs["choices"] = option.section.choices[option.path]
    parse = option.spelling.parse or (_json_object if kind is dict else kind)
    if parse not in (int, float, str, _json_object) and option.spelling.parse is None:
        raise TypeError(f"{option.section.cls.__name__}.{option.path}: no command-line reading of {kind}; "
                        "give the field cli(parse=...)")
    kwargs["type"] = _reader(parse)
    if option.spelling.metavar or "choices" not in kwargs:  # argparse shows choices where metavar is unset
        kwargs["metavar"] = option.spelling.metavar or option.field.name.upper()
    return kwargs


def shown_default(option: Option) -> str:
    """The default as --help states it."""
    default = option.default
    if option.path in option.section.unset:
        return option.section.unset[option.path]
    if option.type is bool and default is not None:
        return "off"  # a switch is not given unless asked for
    if default is None or default == []:
        return "none"
    if isinstance(default, dict):
        return json.dumps(default)
    return " ".join(map(str, default)) if isinstance(default, list) else str(default)


def _plain(text: str) -> str:
    """Comment or docstring text as help: one line, reST roles and literals as plain words."""
    text = re.sub(r":\w+:`~?([^`]*)`", r"\1", " ".join(text.split()))
    return text.replace("``", "")


def help_text(option: Option) -> str:
    """The option's help: its field's comment (or the section's wording), with its default unless it says it.

    A comment that starts with the option's own flag (``# --fp32: train in fp32``) states what the flag does:
    the flag is not repeated.
    """
    text = _plain(option.section.help.get(option.path, option.doc))
    for flag in option.flags():
        text = text.removeprefix(f"{flag}: ")
    if option.path in option.section.one_of:
        others = [o.flags()[0] for o in options(option.section) if o.path in option.section.one_of]
        text = f"{text} (give one of {', '.join(others)})".strip()
    elif option.required:
        text = f"{text} (required)".strip()
    elif not re.search(r"\bdefault\b", text):
        text = f"{text} (default: {shown_default(option)})".strip()
    return text.replace("%", "%%")  # argparse %-formats help


def add_option(group: Any, option: Option) -> None:
    """Add ``option`` (and its shortcut flags) to an argparse parser or group."""
    kwargs: dict[str, Any] = dict(dest=option.dest, help=help_text(option))
    default = option.default
    if option.type is bool and default is None:
        _add_switch_pair(group, option, kwargs)
        return
    if option.type is bool:
        if default not in (True, False):
            raise TypeError(f"{option.section.cls.__name__}.{option.path}: a switch needs a True or False default")
        kwargs["action"] = "store_false" if default else "store_true"
    else:
        kwargs.update(_value_kwargs(option))
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    if option.required and option.path not in option.section.one_of:
        kwargs["required"] = True
    group.add_argument(*option.flags(), **kwargs)
    for flag, value in option.spelling.shortcuts:
        group.add_argument(flag, dest=option.dest, action="store_const", const=value,
                           help=f"same as {option.flags()[0]} {value}")


def _add_switch_pair(group: Any, option: Option, kwargs: dict[str, Any]) -> None:
    """A ``bool | None`` field: ``--name`` sets True, ``--no-name`` False, neither leaves None (decided later)."""
    (flag,) = option.flags()
    off = "--no-" + flag.removeprefix("--")
    group.add_argument(flag, action="store_const", const=True, default=None, **kwargs)
    group.add_argument(off, dest=option.dest, action="store_const", const=False, default=None,
                       help=f"the opposite of {flag}")


class Command:
    """A tool's command line: its sections' options on one :class:`ToolArgumentParser`."""

    def __init__(self, description: str, *sections: Section, check: Callable[[dict], str | None] | None = None):
        self.description, self.sections, self.check = description, sections, check

    def options(self) -> list[Option]:
        """Every option of every section."""
        return [o for s in self.sections for o in options(s)]

    def parser(self) -> ToolArgumentParser:
        """The parser, options grouped by the dataclass they fill (titled by its docstring in --help)."""
        parser = ToolArgumentParser(description=self.description, formatter_class=argparse.RawDescriptionHelpFormatter)
        groups: dict[tuple[str, str], Any] = {}
        for section in self.sections:
            exclusive = None
            for option in options(section):
                owner = option.path.rpartition(".")[0]
                key = (section.prefix, owner)
                if key not in groups:
                    cls = _class_at(section.cls, owner)
                    groups[key] = parser.add_argument_group(cls.__name__, _plain((cls.__doc__ or "").split("\n")[0]))
                group = groups[key]
                if option.path in section.one_of:
                    exclusive = exclusive or group.add_mutually_exclusive_group(required=True)
                    group = exclusive
                add_option(group, option)
        return parser

    def parse(self, argv: Sequence[str]) -> dict[str, Any]:
        """The given arguments' values by key (``prefix`` + field path); absent ``unset`` options left out."""
        if argv is None:  # argparse would read sys.argv: only a tool's entry point may
            raise TypeError("Command.parse needs the argument list")
        parser = self.parser()
        values = vars(parser.parse_args(list(argv)))
        for section in self.sections:
            for path in section.unset:
                if values.get(section.prefix + path, 0) is None:
                    del values[section.prefix + path]
        problem = self.check(values) if self.check else None
        if problem:
            parser.error(problem)
        return values


def _class_at(cls: type, path: str) -> type:
    """The dataclass at dotted field ``path`` inside ``cls`` ('' is ``cls``)."""
    for name in filter(None, path.split(".")):
        cls = _without_none(typing.get_type_hints(cls)[name])
    return cls


def build(cls: type, values: Mapping[str, Any], prefix: str = "", **given: Any) -> Any:
    """``cls`` from parsed values (keys ``prefix`` + field path), nested dataclasses alike; ``given`` fields win."""
    hints, kwargs = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if f.name in given:
            kwargs[f.name] = given[f.name]
        elif key in values:
            kwargs[f.name] = values[key]
        elif dataclasses.is_dataclass(_without_none(hints[f.name])) and any(k.startswith(key + ".") for k in values):
            kwargs[f.name] = build(_without_none(hints[f.name]), values, key + ".")
    return cls(**kwargs)


def nested(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The values under ``prefix`` as nested dicts: ``train.optim.lr`` under "train." -> {"optim": {"lr": ...}}."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key.startswith(prefix):
            *parents, name = key[len(prefix):].split(".")
            node = out
            for parent in parents:
                node = node.setdefault(parent, {})
            node[name] = value
    return out


def positive_int(text: str) -> int:
    """A whole number of at least 1 (a ``cli(parse=...)`` reader)."""
    if not text.isdigit() or int(text) < 1:
        raise UserInputError(f"expected a positive integer, got {text!r}")
    return int(text)
