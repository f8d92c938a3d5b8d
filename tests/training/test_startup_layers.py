"""The start-up checks see the run's sequence parallelism: FP8 blockwise needs 128-token blocks per rank, and
the tokens a micro-batch splits over the tensor-parallel ranks must divide by their number."""

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


@pytest.mark.parametrize("impl,pp,seq,micro,refused", [
    ("local", 1, 33, 2, "seq_length 33 does not divide by 2"),  # sbhd splits each sequence
    ("te", 1, 33, 2, None),  # thd splits the micro-batch's 66 flat tokens
    ("te", 1, 33, 1, "seq_length x micro_batch_size = 33 x 1 tokens"),
    ("te", 2, 33, 2, "seq_length 33 does not divide by 2"),  # pipeline buffers are [S / TP, B, H]
    ("local", 2, 32, 1, None),
])
def test_sequence_parallel_split_must_divide_by_tensor_parallel(monkeypatch, impl, pp, seq, micro, refused):
    import megatron_solo.model.specs as specs
    from megatron_solo.config import ParallelConfig, TrainConfig, model_preset
    from megatron_solo.training.startup import RunSetupError, check_sequence_split

    monkeypatch.setattr(specs, "resolve_impl", lambda model, bf16: impl)  # TE cannot be imported on a CPU
    model, train = model_preset("solo-tiny"), TrainConfig(seq_length=seq, micro_batch_size=micro)
    check_sequence_split(model, train, ParallelConfig(2, pp, sequence_parallel=False))  # nothing split
    if refused is None:
        check_sequence_split(model, train, ParallelConfig(2, pp, sequence_parallel=True))
        return
    with pytest.raises(RunSetupError, match=refused) as info:
        check_sequence_split(model, train, ParallelConfig(2, pp, sequence_parallel=True))
    assert "\n" not in str(info.value) and "--no-sequence-parallel" in str(info.value)
