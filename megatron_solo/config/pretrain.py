"""tools/pretrain.py's command line: JobConfig's fields, their recipe's defaults, the named model switches.

Every JobConfig field is an option (nested ones flattened: ``--tensor-parallel``, ``--lr``, ``--data-workers``);
a TrainConfig value that a recipe sets defaults to the recipe's. Model shape is ``--model-overrides``
JSON; the layer implementation and FP8 fields of SoloModelConfig are also switches of their own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from megatron_solo.config.cli import Command, Section, build, cli, nested
from megatron_solo.config.data import DataConfig, DatasetSource
from megatron_solo.config.job import JobConfig
from megatron_solo.config.model import SoloModelConfig, model_preset, preset_names
from megatron_solo.config.recipes import default_recipe, recipe, recipe_fields, recipe_names, recipe_template
from megatron_solo.errors import UserInputError
from megatron_solo.vocab.ids import SOLO_CHAT_VOCAB_SIZE

# SoloModelConfig fields with a switch of their own (all others: --model-overrides)
MODEL_SWITCHES = ("transformer_impl", "fp8", "fp8_recipe")


@dataclass
class PretrainOptions:
    """What the command line chooses besides JobConfig's values."""

    # training defaults (default: the model's own recipe, stage1 for solo-7b, small for solo-small / solo-tiny)
    recipe: str | None = None
    chat_tokens: bool = False  # the vocabulary with <|im_start|>/<|im_end|> (vocab_size over the preset's)
    # held-out shard folders for the validation loss (none: no validation)
    eval_data: list[DatasetSource] = field(default_factory=list, metadata=cli(
        metavar="PATH[:WEIGHT]", parse=DatasetSource.parse))


def pretrain_command(description: str) -> Command:
    """tools/pretrain.py's command line."""
    return Command(
        description,
        Section(PretrainOptions, prefix="options.", choices={"recipe": recipe_names()}),
        Section(JobConfig, skip=("template", "eval_data", "data.seed"), choices={"model": preset_names()},
                required=("data.datasets",), unset={f"train.{p}": "the recipe's" for p in recipe_fields()}),
        Section(SoloModelConfig, prefix="switches.", only=MODEL_SWITCHES,
                unset=dict.fromkeys(MODEL_SWITCHES, "the preset's"), help={  # model.py's comments, for a user
                    "fp8": "FP8 training (Transformer Engine, compute capability >= 8.9)",
                    "fp8_recipe": "FP8 scaling (delayed: from the amax history; tensorwise: per-tensor current scaling; "
                                  "blockwise: Hopper and newer; mxfp8: Blackwell)"}),
        check=_check,
    )


def _check(values: Mapping[str, Any]) -> str | None:
    """A combination of options that cannot run, worded for the command line."""
    if "switches.fp8_recipe" in values and "switches.fp8" not in values:
        return "--fp8-recipe needs --fp8"
    return None


def build_job(values: Mapping[str, Any]) -> JobConfig:
    """JobConfig from the command line's values: the recipe's defaults, then the options given."""
    options = build(PretrainOptions, values, "options.")
    name = options.recipe or default_recipe(values["model"])
    train = recipe(name, **nested(values, "train."))
    data = build(DataConfig, values, "data.", seed=train.seed)
    eval_data = dataclasses.replace(data, datasets=options.eval_data) if options.eval_data else None
    overrides = _model_overrides(values["model"], values["model_overrides"], options.chat_tokens,
                                 nested(values, "switches."))
    return build(JobConfig, values, train=train, data=data, eval_data=eval_data, model_overrides=overrides,
                 template=recipe_template(name))


def _model_overrides(model: str, overrides: dict, chat_tokens: bool, switches: dict[str, Any]) -> dict:
    """--model-overrides with the chat vocabulary and the model switches applied, checked against the preset."""
    overrides = dict(overrides)
    if chat_tokens:
        if overrides.get("vocab_size", SOLO_CHAT_VOCAB_SIZE) != SOLO_CHAT_VOCAB_SIZE:
            raise UserInputError(f"--chat-tokens sets vocab_size {SOLO_CHAT_VOCAB_SIZE}; --model-overrides asks for "
                                 f"{overrides['vocab_size']}")
        overrides["vocab_size"] = SOLO_CHAT_VOCAB_SIZE
    overrides.update(switches)
    model_preset(model, **overrides)  # fail early on a bad override
    return overrides
