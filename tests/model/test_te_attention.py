"""The start-up question to Transformer Engine about packed attention, with stand-ins of TE's two API homes."""

from __future__ import annotations

import dataclasses
import logging
import sys
import types

import pytest
import torch

from megatron_solo.config import ParallelConfig, model_preset
from megatron_solo.model import specs, te_attention
from megatron_solo.model.specs import LayerImplError
from megatron_solo.model.te_attention import check_te_attention, packed_attention_params
from tests.harness import solo_batches as SB

# What TE 2.8 logs on an A100 without flash-attn for solo-7b's packed attention (its utils.py).
A100_REASONS = ["Disabling FlashAttention as flash-attn is not installed",
                "Disabling FusedAttention as no backend supports the provided input",
                "Disabling UnfusedDotProductAttention for qkv_format = thd"]


@dataclasses.dataclass
class _OlderParams:
    """AttentionParams of TE 1.12-2.3: fewer fields than ours; the check passes only those it has."""

    qkv_dtype: torch.dtype = torch.bfloat16
    qkv_layout: str = "sbh3d"
    num_heads: int = 16
    num_gqa_groups: int = 16
    window_size: tuple | None = None


@pytest.fixture
def te(monkeypatch):
    """te(available, reasons, home): a stand-in TE whose get_attention_backend logs ``reasons`` and answers."""
    te_attention._ask_once.cache_clear()
    asked: list = []

    def set_(available=(False, False, False), reasons=(), home=te_attention.TE_BACKEND_MODULES[0]):
        module = types.ModuleType(home)
        module.AttentionParams = _OlderParams

        def get_attention_backend(params):
            asked.append(params)
            for line in reasons:
                logging.getLogger(te_attention.TE_LOGGER).debug(line)
            # TE 2.4 on returns six values, before five: available_backends is last in both
            selected = [None] * (5 if home == te_attention.TE_BACKEND_MODULES[0] else 4)
            return (*selected, list(available))

        module.get_attention_backend = get_attention_backend
        for name in te_attention.TE_BACKEND_MODULES:
            monkeypatch.delitem(sys.modules, name, raising=False)
        monkeypatch.setitem(sys.modules, "transformer_engine", types.ModuleType("transformer_engine"))
        monkeypatch.setitem(sys.modules, home, module)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100-SXM4-80GB")
        return asked

    yield set_
    te_attention._ask_once.cache_clear()


@pytest.mark.parametrize("home", te_attention.TE_BACKEND_MODULES)
def test_no_packed_attention_kernel_is_one_line_naming_the_machine_and_the_way_out(te, home):
    asked = te(reasons=A100_REASONS, home=home)
    model = model_preset("solo-7b")
    with pytest.raises(LayerImplError) as err:
        check_te_attention(model, tensor_parallel=2)
    line = str(err.value)
    assert "\n" not in line
    for part in ("32 heads, 8 query groups, head size 128, window 4096", "NVIDIA A100-SXM4-80GB (sm80)",
                 "flash-attn not installed", *A100_REASONS, "use transformer_impl='local' (--transformer-impl local) "
                 "or a model without sliding_window"):
        assert part in line
    # what megatron-core hands TE on one rank at TP2, in the fields this TE knows
    assert asked[-1] == _OlderParams(qkv_layout="thd_thd_thd", num_heads=16, num_gqa_groups=4, window_size=(4095, 0))


def test_a_kernel_found_passes_and_the_question_is_asked_once(te):
    asked = te(available=(False, True, False))
    model = SB.tiny_solo_config()
    check_te_attention(model, 1)
    check_te_attention(model, 1)
    assert len(asked) == 1
    assert logging.getLogger(te_attention.TE_LOGGER).level == logging.NOTSET  # TE's logger left as it was


def test_a_te_without_the_selection_function_is_not_second_guessed(te, monkeypatch):
    te()
    for name in te_attention.TE_BACKEND_MODULES:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    check_te_attention(SB.tiny_solo_config(), 1)


def test_a_selection_function_that_fails_is_a_warning_not_a_crash(te, monkeypatch):
    te()
    module = sys.modules[te_attention.TE_BACKEND_MODULES[0]]
    monkeypatch.setattr(module, "get_attention_backend", lambda p: (_ for _ in ()).throw(KeyError("recipe")))
    with pytest.warns(UserWarning, match="could not ask Transformer Engine .*KeyError: 'recipe'"):
        check_te_attention(SB.tiny_solo_config(), 1)


def test_params_are_megatron_cores_for_packed_documents():
    fields = packed_attention_params(model_preset("solo-7b"), tensor_parallel=4)
    assert (fields["qkv_layout"], fields["attn_mask_type"], fields["qkv_dtype"]) == \
        ("thd_thd_thd", "padding_causal", torch.bfloat16)
    assert (fields["num_heads"], fields["num_gqa_groups"], fields["head_dim_qk"]) == (8, 2, 128)
    assert packed_attention_params(SB.tiny_solo_config(), 1)["window_size"] == (-1, 0)
    assert not fields["deterministic"]


def test_deterministic_kernels_are_asked_for_as_te_asks_for_them(monkeypatch):
    monkeypatch.setenv("NVTE_ALLOW_NONDETERMINISTIC_ALGO", "0")
    assert packed_attention_params(SB.tiny_solo_config(), 1)["deterministic"]


def test_the_te_model_is_refused_before_it_is_built(te, monkeypatch):
    from megatron_solo.model.builder import build_solo_model

    te(reasons=A100_REASONS)
    monkeypatch.delenv(specs.IMPL_ENV, raising=False)
    monkeypatch.setattr(specs, "transformer_engine_status", lambda: (True, ""))
    with pytest.raises(LayerImplError, match="no attention kernel for packed documents"):
        build_solo_model(SB.tiny_solo_config(), ParallelConfig(), bf16=True)
