"""SOLO's training recipe (paper Table 1 and the release's scripts) as named presets, plus one for small models.

Every stage starts from the previous stage's weights with a fresh optimizer and schedule.
"""

from __future__ import annotations

import dataclasses

from megatron_solo.config.job import CHAT_TEMPLATE, PLAIN_TEMPLATE
from megatron_solo.config.train import OptimConfig, TrainConfig
from megatron_solo.errors import UserInputError

# The recipe of the small presets (solo-small, solo-tiny): a short run on a laptop that visibly learns.
# SOLO's stage-1 values (lr 5e-5, 200 warm-up steps, 32K x 128 tokens a step) teach a few-million-parameter
# model nothing in the hundred steps such a run has. Tune these values here, in one place.
SMALL = dict(
    train_steps=200, global_batch_size=8, seq_length=1024, eval_interval=25, eval_iters=4,
    optim=dict(lr=2e-3, min_lr=2e-4, warmup_steps=10, weight_decay=0.1, decay_style="cosine", clip_grad=1.0),
)

_RECIPES: dict[str, dict] = {
    # ImageNet-21K captions + SlimPajama (0.7 / 0.3), 6.76 B tokens.
    "stage1": dict(train_steps=1525, global_batch_size=128, seq_length=32768,
                   optim=dict(lr=5e-5, min_lr=5e-6, warmup_steps=200, weight_decay=0.1, decay_style="cosine")),
    # Web-scale captions, OCR, charts + SlimPajama, 14.85 B tokens.
    "stage2": dict(train_steps=3481, global_batch_size=128, seq_length=32768,
                   optim=dict(lr=5e-5, min_lr=5e-6, warmup_steps=200, weight_decay=0.1, decay_style="cosine")),
    # Annealing on high-quality data + 10% SlimPajama, 1.28 B tokens.
    "stage3": dict(train_steps=300, global_batch_size=128, seq_length=32768,
                   optim=dict(lr=5e-5, min_lr=5e-6, warmup_steps=200, weight_decay=0.1, decay_style="cosine")),
    # Instruction tuning: global batch 512, sequences up to 4096, linear schedule.
    "sft": dict(train_steps=1000, global_batch_size=512, seq_length=4096,
                optim=dict(lr=1e-5, min_lr=0.0, warmup_steps=50, weight_decay=0.05, decay_style="linear")),
    "small": SMALL,
}

# The recipe a model preset trains with when none is named: SOLO's stage 1 for the 7B model.
_DEFAULT_RECIPE = {"solo-7b": "stage1", "solo-small": "small", "solo-tiny": "small"}

# Recipes whose data uses SOLO's instruction template ([INST] ... [/INST]); the rest are plain text.
_CHAT_RECIPES = ("sft",)


def recipe_names() -> list[str]:
    """Names accepted by :func:`recipe`."""
    return sorted(_RECIPES)


def recipe_fields() -> list[str]:
    """The TrainConfig fields some recipe sets (``optim.lr`` for an OptimConfig one): their default is the recipe's."""
    names = set()
    for values in _RECIPES.values():
        names |= {k for k in values if k != "optim"} | {f"optim.{k}" for k in values.get("optim", {})}
    return sorted(names)


def default_recipe(model: str) -> str:
    """The recipe a model preset trains with when none is named (stage1 for presets not listed)."""
    return _DEFAULT_RECIPE.get(model, "stage1")


def recipe_template(name: str) -> str:
    """The prompt template a model trained with recipe ``name`` expects: "chat" or "plain"."""
    return CHAT_TEMPLATE if name in _CHAT_RECIPES else PLAIN_TEMPLATE


def recipe(name: str, **overrides) -> TrainConfig:
    """TrainConfig of a SOLO stage with any field (or ``optim`` sub-field) overridden."""
    if name not in _RECIPES:
        raise UserInputError(f"unknown recipe {name!r}; choose one of {recipe_names()}")
    base = dict(_RECIPES[name])
    optim = {**base.pop("optim"), **overrides.pop("optim", {})}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserInputError(f"unknown TrainConfig field(s) {unknown}")
    return TrainConfig(**{**base, **overrides}, optim=OptimConfig(**optim))
