"""RoPE of a HF decoder both ways: config.json's theta and scaling <-> SoloModelConfig's rotary_base and RopeScaling.

transformers 4.x writes ``rope_theta`` and a ``rope_scaling`` dict (``rope_type``, or the older ``type``);
5.x writes both into one ``rope_parameters`` dict. Plain RoPE, Llama-3.1's ``llama3`` scaling and YaRN
are taken: megatron-core computes each of them exactly as transformers does (``RotaryEmbedding._apply_scaling``,
``YarnRotaryEmbedding``). Any other type, or a value megatron-core has no option for, is refused naming the field.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from megatron_solo.config.model import RopeScaling
from megatron_solo.hf.source import ConversionError

# config.json keys of each scaling taken -> RopeScaling field (transformers' names)
HF_KEYS = {
    "llama3": {"factor": "factor", "original_max_position_embeddings": "original_max_positions",
               "low_freq_factor": "low_freq_factor", "high_freq_factor": "high_freq_factor"},
    "yarn": {"factor": "factor", "original_max_position_embeddings": "original_max_positions",
             "beta_fast": "beta_fast", "beta_slow": "beta_slow", "mscale": "mscale",
             "mscale_all_dim": "mscale_all_dim", "truncate": "truncate"},
}
# keys that may stand beside a scaling's own without changing it
NEUTRAL_KEYS = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}


def rope_from_hf(config: dict, config_file: Path) -> tuple[float, RopeScaling | None]:
    """(rotary_base, RopeScaling or None) of a HF config; ConversionError naming a scaling megatron-core lacks."""
    params = config.get("rope_parameters") or {}
    theta = float(config.get("rope_theta") or params.get("rope_theta") or 10000.0)
    if float(config.get("partial_rotary_factor") or params.get("partial_rotary_factor") or 1.0) != 1.0:
        raise ConversionError(f"{config_file}: field 'partial_rotary_factor' is not supported (RoPE on whole heads only)")
    field, scaling = "rope_scaling", config.get("rope_scaling")
    if not scaling and params.get("rope_type", "default") != "default":
        field, scaling = "rope_parameters", params
    kind = (scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default"
    if kind == "default":
        return theta, None
    if kind not in HF_KEYS:
        raise ConversionError(f"{config_file}: field {field!r} = {scaling!r}: RoPE scaling {kind!r} is not supported "
                              f"(plain, {', '.join(HF_KEYS)})")
    unknown = sorted(set(scaling) - set(HF_KEYS[kind]) - NEUTRAL_KEYS)
    if unknown:
        raise ConversionError(f"{config_file}: field {field!r} has {unknown[0]!r}, which megatron-core's {kind} RoPE "
                              f"has no option for")
    return theta, _scaling(kind, scaling, config, f"{config_file}: field {field!r}")


def _scaling(kind: str, scaling: dict, config: dict, where: str) -> RopeScaling:
    """RopeScaling from a ``llama3`` / ``yarn`` dict, with transformers' defaults for what it leaves out."""
    values = {ours: scaling[hf] for hf, ours in HF_KEYS[kind].items() if scaling.get(hf) is not None}
    if "original_max_positions" not in values:
        raise ConversionError(f"{where} lacks 'original_max_position_embeddings'")
    if "factor" not in values and kind == "yarn":  # transformers' default: the context's growth
        values["factor"] = float(config["max_position_embeddings"]) / float(values["original_max_positions"])
    if kind == "yarn":
        values["beta_fast"] = values.get("beta_fast") or 32.0  # transformers reads 0 as unset
        values["beta_slow"] = values.get("beta_slow") or 1.0
        if not (values.get("mscale") and values.get("mscale_all_dim")):  # transformers uses them only together
            values = {k: v for k, v in values.items() if k not in ("mscale", "mscale_all_dim")}
    try:
        out = RopeScaling(kind=kind, **{k: _number(k, v) for k, v in values.items()})
        out.validate()
    except (TypeError, ValueError) as err:
        raise ConversionError(f"{where}: {err}") from err
    return out


def _number(name: str, value):
    """A config value as RopeScaling's type for ``name``."""
    if name == "truncate":
        return bool(value)
    return int(value) if name == "original_max_positions" else float(value)


def rope_to_hf(theta: float, scaling: RopeScaling | None) -> dict:
    """transformers config keyword arguments (``rope_theta``, ``rope_scaling``) for this RoPE."""
    if scaling is None:
        return {"rope_theta": theta}
    values = dataclasses.asdict(scaling)
    if values["truncate"]:
        del values["truncate"]  # transformers' default, a key older versions do not know
    out = {hf: values[ours] for hf, ours in HF_KEYS[scaling.kind].items() if values.get(ours) is not None}
    return {"rope_theta": theta, "rope_scaling": {"rope_type": scaling.kind, **out}}
