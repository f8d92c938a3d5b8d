"""Typed configuration dataclasses: model presets, parallelism, optimisation, recipes, data, job, evaluation; the tools' options are derived from their fields (cli.py)."""

from megatron_solo.config.evaluation import EvalConfig
from megatron_solo.config.job import JobConfig
from megatron_solo.config.model import SoloModelConfig, model_preset, preset_names
from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.config.recipes import default_recipe, recipe, recipe_names, recipe_template
from megatron_solo.config.train import OptimConfig, TrainConfig

__all__ = [
    "EvalConfig",
    "JobConfig",
    "OptimConfig",
    "ParallelConfig",
    "SoloModelConfig",
    "TrainConfig",
    "default_recipe",
    "model_preset",
    "preset_names",
    "recipe",
    "recipe_names",
    "recipe_template",
]
