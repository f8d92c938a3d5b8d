"""The start-up layer check sees the run's sequence parallelism (FP8 blockwise needs 128-token blocks per rank)."""

import pytest

from megatron_solo.model.specs import LayerImplError


def test_describe_layers_applies_the_blockwise_rule_under_sequence_parallelism(monkeypatch):
    import megatron_solo.model.specs as specs
    from megatron_solo.config import model_preset
    from megatron_solo.training.startup import describe_layers

    # TE cannot be imported on a CPU: the precision checks that need it are not what is tested here
    monkeypatch.setattr(specs, "check_fp8", lambda model, bf16: None)
    monkeypatch.setattr(specs, "describe_precision", lambda model, bf16: "TE spec, bf16 + FP8 hybrid (blockwise)")
    block = model_preset("solo-7b", fp8="hybrid", fp8_recipe="blockwise")
    assert describe_layers(block, True, 4112, 2).startswith("layers: ")
    with pytest.raises(LayerImplError, match="multiples of 128; this run has 4112 tokens per rank"):
        describe_layers(block, True, 4112, 2, sequence_parallel=True)
