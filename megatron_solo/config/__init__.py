"""Typed configuration dataclasses: model presets, parallelism, optimisation, data."""

from megatron_solo.config.model import SoloModelConfig, model_preset, preset_names
from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.config.train import OptimConfig, TrainConfig

__all__ = [
    "OptimConfig",
    "ParallelConfig",
    "SoloModelConfig",
    "TrainConfig",
    "model_preset",
    "preset_names",
]
