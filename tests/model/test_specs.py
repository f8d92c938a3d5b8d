"""Layer implementation and FP8 checks: every branch, with TE presence and the GPU faked on the CPU."""

from __future__ import annotations

import re
import sys
import types

import pytest
import torch

from megatron_solo.config import ParallelConfig
from megatron_solo.config.model import SoloModelConfig
from megatron_solo.errors import UserInputError, run_tool
from megatron_solo.model import specs
from megatron_solo.model.specs import LayerImplError, check_fp8, describe_precision, resolve_impl
from tests.harness import solo_batches as SB


@pytest.fixture
def machine(monkeypatch):
    """Set what the machine offers: machine(te=True, fp8={TE function: (ok, reason)}); no TE, no GPU by default.

    With ``te`` a stand-in ``transformer_engine.pytorch`` (TE cannot be imported without CUDA) answers
    TE 2.11's recipe-support functions, each "supported" unless ``fp8`` gives its answer.
    """
    monkeypatch.delenv(specs.IMPL_ENV, raising=False)

    def set_(te: bool = False, fp8: dict[str, tuple[bool, str]] | None = None):
        monkeypatch.setattr(specs, "transformer_engine_status", lambda: (True, "") if te else (False, "no CUDA GPU"))
        if not te:
            return
        module = types.ModuleType("transformer_engine.pytorch")
        for name in set(specs.FP8_RECIPES.values()):
            answer = (fp8 or {}).get(name, (True, ""))
            setattr(module, name, lambda return_reason=False, _a=answer: _a if return_reason else _a[0])
        package = types.ModuleType("transformer_engine")
        package.pytorch = module
        monkeypatch.setitem(sys.modules, "transformer_engine", package)
        monkeypatch.setitem(sys.modules, "transformer_engine.pytorch", module)

    set_()
    return set_


@pytest.fixture
def broken_te(tmp_path, monkeypatch):
    """An installed transformer_engine whose torch module fails to import (as one built for another CUDA); CUDA faked."""
    package = tmp_path / "transformer_engine"
    (package / "pytorch").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "pytorch" / "__init__.py").write_text(
        'raise ImportError("libcudnn_graph.so.9: cannot open shared object file: No such file or directory")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(specs.IMPL_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    specs.transformer_engine_status.cache_clear()
    yield
    specs.transformer_engine_status.cache_clear()
    for name in [n for n in sys.modules if n == "transformer_engine" or n.startswith("transformer_engine.")]:
        del sys.modules[name]


def _cfg(**overrides):
    return SB.tiny_solo_config(**overrides)


def test_auto_picks_te_only_where_usable(machine):
    assert resolve_impl(_cfg()) == "local"
    machine(te=True)
    assert resolve_impl(_cfg()) == "te"
    assert resolve_impl(_cfg(transformer_impl="local")) == "local"
    # TE would run fp32 packed attention on its unfused fallback: fp32 runs take the local spec, or are refused
    assert resolve_impl(_cfg(), bf16=False) == "local"
    with pytest.raises(LayerImplError, match="'te' runs in bf16 only: in fp32 .* unfused"):
        resolve_impl(_cfg(transformer_impl="te"), bf16=False)


def test_te_requested_without_te_is_a_one_line_user_error(machine, capsys):
    with pytest.raises(LayerImplError, match="needs Transformer Engine on a CUDA GPU, and here: no CUDA GPU") as err:
        resolve_impl(_cfg(transformer_impl="te"))
    assert isinstance(err.value, UserInputError) and "\n" not in str(err.value)
    assert run_tool(lambda argv: resolve_impl(_cfg(transformer_impl="te"))) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: transformer_impl='te'")
    with pytest.raises(UserInputError, match="transformer_impl must be one of auto, te, local, got 'apex'"):
        _cfg(transformer_impl="apex")  # refused where the config is made


def test_installed_te_that_fails_to_import_is_named_at_start_up_and_when_asked_for(broken_te, capsys):
    why = "Transformer Engine is installed but failed to import: ImportError: libcudnn_graph.so.9: cannot open"
    assert describe_precision(_cfg(), bf16=True).startswith(f"local spec, bf16; {why}")
    with pytest.raises(LayerImplError, match=f"transformer_impl='te' needs .*, and here: {why}") as err:
        resolve_impl(_cfg(transformer_impl="te"))
    assert "\n" not in str(err.value)
    assert run_tool(lambda argv: resolve_impl(_cfg(transformer_impl="te"))) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(LayerImplError, match=f"fp8 needs .*, and here: {why}"):
        check_fp8(_cfg(fp8="hybrid"))


def test_absent_te_adds_nothing_to_the_start_up_line(machine):
    assert describe_precision(_cfg(), bf16=True) == "local spec, bf16"
    assert specs.transformer_engine_broken() is None


def test_environment_forces_auto_to_one_spec(machine, monkeypatch):
    machine(te=True)
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
        (dict(fp8="e5m2"), "fp8 must be one of hybrid, e4m3, got 'e5m2'"),
        (dict(fp8="hybrid", fp8_recipe="custom"), "fp8_recipe must be one of delayed, tensorwise, blockwise, mxfp8"),
        (dict(fp8="hybrid", fp8_recipe="per-tensor"), "fp8_recipe must be one of"),
        (dict(fp8="hybrid", fp8_amax_compute_algo="mean"), "fp8_amax_compute_algo must be one of max, most_recent"),
    ],
)
def test_fp8_values_are_refused_where_the_config_is_made(overrides, message):
    with pytest.raises(UserInputError, match=message):
        _cfg(**overrides)


def test_fp8_amax_history_is_validated(machine):
    machine(te=True)
    with pytest.raises(LayerImplError, match="fp8_amax_history_len"):
        check_fp8(_cfg(fp8="hybrid", fp8_amax_history_len=0))


def test_every_fp8_recipe_has_its_transformer_engine_check():
    from megatron_solo.config.choices import choices
    from megatron_solo.model.specs import FP8_RECIPES

    assert tuple(FP8_RECIPES) == choices(SoloModelConfig, "fp8_recipe")


def test_fp8_without_te_or_with_the_local_spec_is_refused(machine):
    with pytest.raises(LayerImplError, match="needs Transformer Engine on a CUDA GPU, and here: no CUDA GPU"):
        check_fp8(_cfg(fp8="hybrid"))
    machine(te=True)
    with pytest.raises(LayerImplError, match="local spec is selected"):
        check_fp8(_cfg(fp8="hybrid", transformer_impl="local"))
    with pytest.raises(LayerImplError, match="fp8 needs bf16"):
        check_fp8(_cfg(fp8="hybrid"), bf16=False)
    check_fp8(_cfg(fp8="hybrid"), bf16=True)


# What TE 2.11 answers where a recipe cannot run (its quantization.py), by the function asked.
TE_REFUSALS = {
    "is_fp8_available": "Device compute capability 8.9 or higher required for FP8 execution.",
    "is_fp8_block_scaling_available": "FP8 block scaled GEMM requires compute capability 9.0 or higher and CUDA >= 12.9.",
    "is_mxfp8_available": "MXFP8 (for all gemm layouts) is not supported on 12.0+ architectures yet.",
}


@pytest.mark.parametrize("refused", sorted(TE_REFUSALS))
def test_fp8_recipe_support_is_what_te_says(machine, refused):
    machine(te=True, fp8={refused: (False, TE_REFUSALS[refused])})
    for recipe, asked in specs.FP8_RECIPES.items():
        cfg = _cfg(fp8="hybrid", fp8_recipe=recipe)
        if asked != refused:
            check_fp8(cfg)
            continue
        said = f"fp8_recipe={recipe!r} does not run here; Transformer Engine says: {TE_REFUSALS[refused]}"
        with pytest.raises(LayerImplError, match=re.escape(said)):
            check_fp8(cfg)


def test_describe_precision(machine):
    assert describe_precision(_cfg(), bf16=False) == "local spec, fp32"
    assert describe_precision(_cfg(), bf16=True) == "local spec, bf16"
    machine(te=True)
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

    with pytest.raises(LayerImplError, match="fp8 needs Transformer Engine"):
        build_solo_model(_cfg(fp8="hybrid"), ParallelConfig(), bf16=True)
    machine(te=True)
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
    # Hopper's FP8 GEMMs are TN only: the weight gradient's inner dimension is the tokens, which cuBLAS
    # wants in multiples of 16 (TE's forward assert accepts 8)
    for recipe in ("delayed", "tensorwise", "blockwise"):
        with pytest.raises(LayerImplError, match="multiple of 16; this run has 4104"):
            check_fp8_shapes(model_preset("solo-7b", fp8="hybrid", fp8_recipe=recipe), 4104)
    mx = model_preset("solo-7b", fp8="hybrid", fp8_recipe="mxfp8")
    with pytest.raises(LayerImplError, match="multiple of 32; this run has 4112"):
        check_fp8_shapes(mx, 4112)
    tiny = model_preset("solo-tiny", fp8="hybrid")  # width 64: 8 columns per rank at TP 8
    check_fp8_shapes(tiny, 256, 4)
    with pytest.raises(LayerImplError, match=r"linear_proj widths \(output x input\) in multiples of 16; at "
                                             r"tensor_parallel=8 it is 64 x 8"):
        check_fp8_shapes(tiny, 256, 8)


def test_fp8_gemm_output_width_is_the_data_gradients_inner_dimension():
    from megatron_solo.config import model_preset
    from megatron_solo.model.specs import check_fp8_shapes

    # 4 heads of 24, one KV group: q, k, v rows (4 + 2) x 24 = 144, 72 per rank at TP 2 (inputs all 16-aligned)
    odd = model_preset("solo-tiny", fp8="hybrid", hidden_size=96, num_attention_heads=4, num_query_groups=1,
                       ffn_hidden_size=256)
    check_fp8_shapes(odd, 256, 1)
    with pytest.raises(LayerImplError, match="linear_qkv widths .* at tensor_parallel=2 it is 72 x 96"):
        check_fp8_shapes(odd, 256, 2)


def test_fp8_block_scaling_under_sequence_parallel_needs_128_token_blocks_per_rank():
    from megatron_solo.config import model_preset
    from megatron_solo.model.specs import check_fp8_shapes

    block = model_preset("solo-7b", fp8="hybrid", fp8_recipe="blockwise")
    check_fp8_shapes(block, 4112, 2)  # 16-aligned: fine without sequence parallelism
    check_fp8_shapes(block, 4096, 2, sequence_parallel=True)
    with pytest.raises(LayerImplError, match="blockwise.*multiples of 128; this run has 4112 tokens per rank"):
        check_fp8_shapes(block, 4112, 2, sequence_parallel=True)
    check_fp8_shapes(model_preset("solo-7b", fp8="hybrid"), 4112, 2, sequence_parallel=True)  # delayed: no blocks


@pytest.fixture
def te_before_2_9(machine, monkeypatch):
    """A stand-in TE of the API before 2.9: no ``is_*_available``; ``fp8.check_*_support()`` answers instead.

    ``te_before_2_9(refusals, block_scaling=True)``; ``block_scaling=False`` is a TE before 2.3, which has none.
    """
    def set_(refusals: dict[str, str] | None = None, block_scaling: bool = True):
        machine(te=True)
        pytorch = sys.modules["transformer_engine.pytorch"]
        for name in specs.FP8_RECIPES.values():
            monkeypatch.delattr(pytorch, name, raising=False)
        fp8 = types.ModuleType("transformer_engine.pytorch.fp8")
        for old in specs.FP8_CHECKS_BEFORE_2_9.values():
            if old == "check_fp8_block_scaling_support" and not block_scaling:
                continue
            reason = (refusals or {}).get(old)
            setattr(fp8, old, lambda _r=reason: (_r is None, _r or ""))
        pytorch.fp8 = fp8
        monkeypatch.setitem(sys.modules, "transformer_engine.pytorch.fp8", fp8)

    return set_


def test_fp8_checks_work_on_transformer_engine_before_2_9(te_before_2_9):
    te_before_2_9()
    for recipe in specs.FP8_RECIPES:
        check_fp8(_cfg(fp8="hybrid", fp8_recipe=recipe))
    te_before_2_9({"check_fp8_support": "Device compute capability 8.9 or higher required for FP8 execution."})
    with pytest.raises(LayerImplError, match=r"'delayed' does not run here; Transformer Engine says: Device compute"):
        check_fp8(_cfg(fp8="hybrid"))
    check_fp8(_cfg(fp8="hybrid", fp8_recipe="mxfp8"))


def test_a_recipe_older_transformer_engine_lacks_is_one_line(te_before_2_9, capsys):
    te_before_2_9(block_scaling=False)
    check_fp8(_cfg(fp8="hybrid", fp8_recipe="delayed"))
    with pytest.raises(LayerImplError, match=r"'blockwise' does not run here; .* has no blockwise recipe; it needs "
                                             r"a newer one") as err:
        check_fp8(_cfg(fp8="hybrid", fp8_recipe="blockwise"))
    assert "\n" not in str(err.value)
