"""The defaults of a config dataclass, for command lines that must not restate them."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace


def defaults(cls: type) -> SimpleNamespace:
    """Each field of dataclass ``cls`` that has a default, as an attribute holding that default."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return SimpleNamespace(**out)
