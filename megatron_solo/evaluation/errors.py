"""The user error of an evaluation: an input (data file, class names, template, option) that cannot be used."""

from __future__ import annotations

from megatron_solo.errors import UserInputError


class EvaluationError(UserInputError):
    """An evaluation input a user can fix; the message names the file, line or option at fault."""
