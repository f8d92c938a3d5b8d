"""Layer implementation and FP8 checks: every branch, with TE presence and the GPU faked on the CPU."""

from __future__ import annotations

import pytest
import torch

from megatron_solo.config import ParallelConfig
from megatron_solo.errors import UserInputError, run_tool
from megatron_solo.model import specs
from megatron_solo.model.specs import LayerImplError, check_fp8, describe_precision, resolve_impl
from tests.harness import solo_batches as SB


@pytest.fixture
def machine(monkeypatch):
    """Set what the machine offers: machine(te=True, capability=(9, 0)); no TE, no GPU by default."""
    monkeypatch.delenv(specs.IMPL_ENV, raising=False)

    def set_(te: bool = False, capability: tuple[int, int] | None = None):
        monkeypatch.setattr(specs, "transformer_engine_usable", lambda: te)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: capability is not None)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)

    set_()
    return set_


def _cfg(**overrides):
    return SB.tiny_solo_config(**overrides)


def test_auto_picks_te_only_where_usable(machine):
    assert resolve_impl(_cfg()) == "local"
    machine(te=True, capability=(9, 0))
    assert resolve_impl(_cfg()) == "te"
    assert resolve_impl(_cfg(transformer_impl="local")) == "local"
    # TE has no fp32 attention over packed documents: fp32 runs take the local spec, or are refused
    assert resolve_impl(_cfg(), bf16=False) == "local"
    with pytest.raises(LayerImplError, match="'te' needs bf16"):
        resolve_impl(_cfg(transformer_impl="te"), bf16=False)


def test_te_requested_without_te_is_a_one_line_user_error(machine, capsys):
    with pytest.raises(LayerImplError, match="needs Transformer Engine and a CUDA GPU") as err:
        resolve_impl(_cfg(transformer_impl="te"))
    assert isinstance(err.value, UserInputError) and "\n" not in str(err.value)
    assert run_tool(lambda argv: resolve_impl(_cfg(transformer_impl="te"))) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: transformer_impl='te'")
    with pytest.raises(LayerImplError, match="must be 'auto', 'te' or 'local'"):
        resolve_impl(_cfg(transformer_impl="apex"))


def test_environment_forces_auto_to_one_spec(machine, monkeypatch):
    machine(te=True, capability=(9, 0))
    monkeypatch.setenv(specs.IMPL_ENV, "local")
    assert resolve_impl(_cfg()) == "local"
    assert resolve_impl(_cfg(transformer_impl="te")) == "te"  # an explicit choice wins
    monkeypatch.setenv(specs.IMPL_ENV, "te")
    assert resolve_impl(_cfg()) == "te"
    machine(te=False)
    monkeypatch.setenv(specs.IMPL_ENV, "te")
    with pytest.raises(LayerImplError, match="needs Transformer Engine"):
        resolve_impl(_cfg())
    monkeypatch.setenv(specs.IMPL_ENV, "fast")
    with pytest.raises(LayerImplError, match="SOLO_TRANSFORMER_IMPL='fast'"):
        resolve_impl(_cfg())


def test_no_fp8_needs_nothing(machine):
    check_fp8(_cfg())  # no TE, no GPU: fine


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(fp8="e5m2"), "fp8 must be one of"),
        (dict(fp8="hybrid", fp8_recipe="custom"), "fp8_recipe must be one of"),
        (dict(fp8="hybrid", fp8_recipe="per-tensor"), "fp8_recipe must be one of"),
        (dict(fp8="hybrid", fp8_amax_compute_algo="mean"), "fp8_amax_compute_algo"),
        (dict(fp8="hybrid", fp8_amax_history_len=0), "fp8_amax_history_len"),
    ],
)
def test_fp8_values_are_validated(machine, overrides, message):
    machine(te=True, capability=(9, 0))
    with pytest.raises(LayerImplError, match=message):
        check_fp8(_cfg(**overrides))


def test_fp8_without_te_or_with_the_local_spec_is_refused(machine):
    with pytest.raises(LayerImplError, match="no usable TE"):
        check_fp8(_cfg(fp8="hybrid"))
    machine(te=True, capability=(9, 0))
    with pytest.raises(LayerImplError, match="local spec is selected"):
        check_fp8(_cfg(fp8="hybrid", transformer_impl="local"))
    with pytest.raises(LayerImplError, match="fp8 needs bf16"):
        check_fp8(_cfg(fp8="hybrid"), bf16=False)
    check_fp8(_cfg(fp8="hybrid"), bf16=True)


@pytest.mark.parametrize(
    "recipe, capability, ok",
    [
        ("delayed", (8, 0), False),  # A100: no FP8 tensor cores
        ("delayed", (8, 9), True),  # Ada
        ("tensorwise", (8, 6), False),
        ("tensorwise", (9, 0), True),  # Hopper
        ("blockwise", (8, 9), False),
        ("blockwise", (9, 0), True),
        ("mxfp8", (9, 0), False),  # MXFP8 is Blackwell-only
        ("mxfp8", (10, 0), True),
    ],
)
def test_fp8_recipe_needs_its_compute_capability(machine, recipe, capability, ok):
    machine(te=True, capability=capability)
    cfg = _cfg(fp8="hybrid", fp8_recipe=recipe)
    if ok:
        check_fp8(cfg)
    else:
        with pytest.raises(LayerImplError, match=f"needs compute capability .* this GPU has compute capability "
                                                 f"{capability[0]}.{capability[1]}"):
            check_fp8(cfg)


def test_describe_precision(machine):
    assert describe_precision(_cfg(), bf16=False) == "local spec, fp32"
    assert describe_precision(_cfg(), bf16=True) == "local spec, bf16"
    machine(te=True, capability=(9, 0))
    assert describe_precision(_cfg(), bf16=False) == "local spec, fp32"
    assert describe_precision(_cfg(fp8="hybrid"), bf16=True) == "TE spec, bf16 + FP8 hybrid (delayed)"
    assert describe_precision(_cfg(fp8="e4m3", fp8_recipe="tensorwise"), bf16=True) == \
        "TE spec, bf16 + FP8 e4m3 (tensorwise)"


def test_transformer_config_gets_megatrons_fp8_recipe_enum():
    from megatron.core.enums import Fp8Recipe

    from megatron_solo.model.transformer_config import build_transformer_config

    cfg = _cfg(fp8="hybrid", fp8_recipe="tensorwise", fp8_amax_history_len=16)
    config = build_transformer_config(cfg, ParallelConfig(), bf16=True, use_te=True)
    assert config.fp8 == "hybrid" and config.fp8_recipe is Fp8Recipe.tensorwise
    assert (config.fp8_amax_history_len, config.fp8_amax_compute_algo) == (16, "max")
    with pytest.raises(LayerImplError, match="local spec has no FP8 path"):
        build_transformer_config(cfg, ParallelConfig(), bf16=True, use_te=False)


def test_builder_checks_fp8_and_refuses_te_with_sbhd(machine):
    from megatron_solo.model.builder import build_solo_model

    with pytest.raises(LayerImplError, match="no usable TE"):
        build_solo_model(_cfg(fp8="hybrid"), ParallelConfig(), bf16=True)
    machine(te=True, capability=(9, 0))
    with pytest.raises(ValueError, match="only in the thd layout"):
        build_solo_model(_cfg(transformer_impl="te"), ParallelConfig(), bf16=True, packed_format="sbhd")
    with pytest.raises(LayerImplError, match="fp8 needs bf16"):
        build_solo_model(_cfg(fp8="hybrid"), ParallelConfig(), bf16=False)


def test_fp8_shapes_are_checked_before_any_kernel_sees_them():
    from megatron_solo.config import model_preset
    from megatron_solo.model.specs import check_fp8_shapes, fp8_gemm_shapes

    big = model_preset("solo-7b", fp8="hybrid")
    assert fp8_gemm_shapes(big, 2)["linear_qkv"] == (3072, 4096)  # (32 + 2 x 8) heads x 128 / TP 2
    check_fp8_shapes(big, 4096, 8)
    check_fp8_shapes(model_preset("solo-7b"), 4097, 3)  # no fp8: nothing to check
    with pytest.raises(LayerImplError, match="multiple of 8; this run has 4100"):
        check_fp8_shapes(big, 4100)
    mx = model_preset("solo-7b", fp8="hybrid", fp8_recipe="mxfp8")
    with pytest.raises(LayerImplError, match="multiple of 32; this run has 4104"):
        check_fp8_shapes(mx, 4104)
    tiny = model_preset("solo-tiny", fp8="hybrid")  # width 64: 8 columns per rank at TP 8
    check_fp8_shapes(tiny, 256, 4)
    with pytest.raises(LayerImplError, match="linear_proj widths .* at tensor_parallel=8 it is 64 x 8"):
        check_fp8_shapes(tiny, 256, 8)
