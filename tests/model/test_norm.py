"""The local spec's RMSNorm: megatron-core's local norm's numbers, its weight marked for sequence parallelism,
in every norm of a local-spec model (the final one included)."""

from __future__ import annotations

import pytest
import torch
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.torch_norm import WrappedTorchNorm

from megatron_solo.config import ParallelConfig
from megatron_solo.model.builder import build_solo_model
from megatron_solo.model.gpt import build_gpt
from megatron_solo.model.norm import LocalRMSNorm
from megatron_solo.platform import init_parallel
from tests.harness import solo_batches as SB


def _config(**kwargs) -> TransformerConfig:
    return TransformerConfig(**{"num_layers": 1, "hidden_size": 8, "num_attention_heads": 2,
                                "normalization": "RMSNorm", "layernorm_epsilon": 1e-5, **kwargs})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_numbers_and_weight_as_megatron_cores_local_norm(dtype):
    config = _config(params_dtype=dtype, bf16=dtype == torch.bfloat16)
    theirs, ours = WrappedTorchNorm(config, 8, eps=1e-5), LocalRMSNorm(config, 8, eps=1e-5)
    with torch.no_grad():
        theirs.weight.copy_(torch.linspace(0.5, 2.0, 8))
    ours.load_state_dict(theirs.state_dict())  # the same names: checkpoints move between them
    assert ours.weight.dtype == theirs.weight.dtype == torch.float32  # made in the default dtype, as before
    x = torch.randn(5, 3, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert torch.equal(ours(x), theirs(x))


def test_weight_is_marked_as_the_config_says():
    assert LocalRMSNorm(_config(tensor_model_parallel_size=2, sequence_parallel=True), 8).weight.sequence_parallel
    assert LocalRMSNorm(_config(), 8).weight.sequence_parallel is False
    with pytest.raises(ValueError, match="RMSNorm"):
        LocalRMSNorm(_config(normalization="LayerNorm"), 8)


def _norms(model: torch.nn.Module) -> dict[str, type]:
    return {name: type(m) for name, m in model.named_modules() if isinstance(m, (torch.nn.RMSNorm, torch.nn.LayerNorm))}


def test_every_norm_of_a_local_spec_model_is_the_local_rmsnorm(world1):
    init_parallel(ParallelConfig(), seed=3)
    cfg = SB.tiny_solo_config(qk_layernorm=True)
    for model in (build_solo_model(cfg, ParallelConfig()), build_gpt(cfg, ParallelConfig(), True, True)):
        norms = _norms(model)
        # per layer: input, pre-MLP, q and k norms; then the final norm
        assert len(norms) == 4 * cfg.num_layers + 1 and "decoder.final_layernorm" in norms, norms
        assert set(norms.values()) == {LocalRMSNorm}, norms
