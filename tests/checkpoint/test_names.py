"""Names independent of the layer implementation: local-spec and Transformer Engine names map alike,
to the checkpoint (canonical names), to Hugging Face (export) and from it (import)."""

from __future__ import annotations

import pytest
import torch

from megatron_solo.checkpoint.names import canonical_name, canonical_state_dict
from megatron_solo.hf.adapters import decoder_adapter
from megatron_solo.hf.importer import fill_chunks

LOCAL_TO_TE = {
    "decoder.layers.0.input_layernorm.weight": "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight",
    "decoder.layers.12.pre_mlp_layernorm.weight": "decoder.layers.12.mlp.linear_fc1.layer_norm_weight",
    "decoder.layers.3.input_layernorm.bias": "decoder.layers.3.self_attention.linear_qkv.layer_norm_bias",
}
UNCHANGED = [
    "embedding.word_embeddings.weight", "decoder.final_layernorm.weight", "output_layer.weight",
    "patch_projection.weight", "decoder.layers.1.self_attention.linear_qkv.weight",
    "decoder.layers.1.self_attention.linear_proj.weight", "decoder.layers.1.mlp.linear_fc1.weight",
    "decoder.layers.1.mlp.linear_fc2.weight", "decoder.layers.1.self_attention.core_attention._extra_state",
]


def test_canonical_name_of_both_name_sets():
    for local, te in LOCAL_TO_TE.items():
        assert canonical_name(local) == te
        assert canonical_name(te) == te  # TE names are the canonical ones already
    for name in UNCHANGED:
        assert canonical_name(name) == name


def test_canonical_state_dict_drops_extra_state():
    sd = {"decoder.layers.0.input_layernorm.weight": torch.ones(2),
          "decoder.layers.0.self_attention.linear_qkv._extra_state": None,
          "decoder.layers.0.mlp.linear_fc1._extra_state": torch.zeros(1)}
    assert list(canonical_state_dict(sd)) == ["decoder.layers.0.self_attention.linear_qkv.layer_norm_weight"]


def test_te_and_local_names_give_the_same_hf_export(world1):
    from megatron_solo.config import ParallelConfig
    from megatron_solo.model.builder import build_solo_model
    from megatron_solo.platform import init_parallel
    from tests.harness import solo_batches as SB

    init_parallel(ParallelConfig(), seed=2)
    cfg = SB.tiny_solo_config()
    local = {k: v for k, v in build_solo_model(cfg, ParallelConfig()).state_dict().items() if torch.is_tensor(v)}
    assert "decoder.layers.0.input_layernorm.weight" in local  # the local spec's own names
    te = {canonical_name(k): v for k, v in local.items()}
    assert "decoder.layers.0.mlp.linear_fc1.layer_norm_weight" in te and te.keys() != local.keys()
    a, b = (dict(decoder_adapter(cfg).to_hf(sd, cfg)) for sd in (local, te))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for i in range(cfg.num_layers):
        assert torch.equal(a[f"model.layers.{i}.input_layernorm.weight"],
                           local[f"decoder.layers.{i}.input_layernorm.weight"])
        assert torch.equal(a[f"model.layers.{i}.post_attention_layernorm.weight"],
                           local[f"decoder.layers.{i}.pre_mlp_layernorm.weight"])


def _param(*shape) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.zeros(*shape))


class _Layer(torch.nn.Module):
    """One transformer layer's norm and projection parameters under either implementation's names."""

    def __init__(self, number: int, te: bool, hidden: int = 4):
        super().__init__()
        self.layer_number = number  # 1-based, global (megatron-core's convention)
        self.self_attention = torch.nn.Module()
        self.self_attention.linear_qkv = torch.nn.Module()
        self.self_attention.linear_qkv.weight = _param(3 * hidden, hidden)
        self.mlp = torch.nn.Module()
        self.mlp.linear_fc1 = torch.nn.Module()
        if te:
            self.self_attention.linear_qkv.layer_norm_weight = _param(hidden)
            self.mlp.linear_fc1.layer_norm_weight = _param(hidden)
        else:
            self.input_layernorm = torch.nn.Module()
            self.input_layernorm.weight = _param(hidden)
            self.pre_mlp_layernorm = torch.nn.Module()
            self.pre_mlp_layernorm.weight = _param(hidden)


def _stage_chunk(te: bool) -> torch.nn.Module:
    """The second pipeline stage of a 4-layer model: local layers 0, 1 are global layers 2, 3."""
    chunk = torch.nn.Module()
    chunk.decoder = torch.nn.Module()
    chunk.decoder.layers = torch.nn.ModuleList([_Layer(3, te), _Layer(4, te)])
    return chunk


@pytest.mark.parametrize("te", [True, False], ids=["te_names", "local_names"])
def test_importer_fills_parameters_of_either_implementation(world1, te):
    from megatron_solo.config import ParallelConfig
    from megatron_solo.platform import init_parallel

    init_parallel(ParallelConfig(), seed=2)
    g = torch.Generator().manual_seed(0)
    source = {}
    for layer in (2, 3):
        for name, shape in (("self_attention.linear_qkv.weight", (12, 4)),
                            ("self_attention.linear_qkv.layer_norm_weight", (4,)),
                            ("mlp.linear_fc1.layer_norm_weight", (4,))):
            source[f"decoder.layers.{layer}.{name}"] = torch.randn(*shape, generator=g)
    asked = []

    def full(name: str) -> torch.Tensor:
        asked.append(name)
        return source[name]

    chunk = _stage_chunk(te)
    fill_chunks([chunk], full, progress=False)
    assert sorted(asked) == sorted(source)  # canonical, global names only
    params = dict(chunk.named_parameters())
    for i, layer in ((0, 2), (1, 3)):
        qkv_norm = "self_attention.linear_qkv.layer_norm_weight" if te else "input_layernorm.weight"
        mlp_norm = "mlp.linear_fc1.layer_norm_weight" if te else "pre_mlp_layernorm.weight"
        assert torch.equal(params[f"decoder.layers.{i}.{qkv_norm}"],
                           source[f"decoder.layers.{layer}.self_attention.linear_qkv.layer_norm_weight"])
        assert torch.equal(params[f"decoder.layers.{i}.{mlp_norm}"],
                           source[f"decoder.layers.{layer}.mlp.linear_fc1.layer_norm_weight"])
        assert torch.equal(params[f"decoder.layers.{i}.self_attention.linear_qkv.weight"],
                           source[f"decoder.layers.{layer}.self_attention.linear_qkv.weight"])
