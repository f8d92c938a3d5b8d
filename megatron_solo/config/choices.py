"""An option's allowed values, stated once: the ``Literal`` of its config field.

The command line takes its choices and ``--help`` shows them from there (:mod:`.cli`); a config built in
code is checked against the same values (:func:`check_choices`, from the dataclass's ``__post_init__``);
the packages above config/ name them through :func:`choices`.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Literal

from megatron_solo.errors import UserInputError


def literal_values(kind: Any) -> tuple | None:
    """The values of a ``Literal`` type (also inside ``X | None``); None for any other type."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        inner = [k for k in typing.get_args(kind) if k is not type(None)]
        kind = inner[0] if len(inner) == 1 else None
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else None


@functools.cache
def _literal_fields(cls: type) -> dict[str, tuple]:
    hints = typing.get_type_hints(cls)
    found = {f.name: literal_values(hints[f.name]) for f in dataclasses.fields(cls)}
    return {name: values for name, values in found.items() if values is not None}


def choices(cls: type, name: str) -> tuple:
    """The allowed values of field ``name`` of dataclass ``cls``."""
    return _literal_fields(cls)[name]


def check_choices(config: Any) -> None:
    """UserInputError naming the first field of ``config`` whose value is not one its ``Literal`` allows."""
    for name, values in _literal_fields(type(config)).items():
        value = getattr(config, name)
        if value is not None and value not in values:
            raise UserInputError(f"{name} must be one of {', '.join(map(str, values))}, got {value!r}")
