"""What a base's config.json becomes, both ways, and the bases refused by the field that asks for what is not built.

Configs come from transformers' own config classes (their defaults are the released models' shapes) or are the
released models' own values; no weights are read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_solo.config.model import RopeScaling
from megatron_solo.hf.adapters import adapter_for
from megatron_solo.hf.rope import rope_from_hf, rope_to_hf
from megatron_solo.hf.source import ConversionError, HFSource

CONFIG = Path("config.json")
# Llama-3.1-8B's config.json (transformers 4.x keys) and Qwen3's YaRN as its model card gives it
LLAMA31 = {"rope_theta": 500000.0, "max_position_embeddings": 131072, "rope_scaling": {
    "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
    "rope_type": "llama3"}}
QWEN3_YARN = {"rope_theta": 1000000.0, "max_position_embeddings": 131072, "rope_scaling": {
    "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}


def _source(config: dict, architecture: str) -> HFSource:
    return HFSource(Path("."), {**config, "architectures": [architecture]}, architecture, {})


def test_llama31_rope_scaling_read_from_either_transformers_layout():
    legacy = rope_from_hf(LLAMA31, CONFIG)
    assert legacy == (500000.0, RopeScaling("llama3", 8.0, 8192, 1.0, 4.0))
    params = {"rope_parameters": {**LLAMA31["rope_scaling"], "rope_theta": 500000.0}}  # as transformers 5 writes it
    assert rope_from_hf(params, CONFIG) == legacy
    assert rope_from_hf({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}, CONFIG) == (1e6, None)


def test_qwen3_yarn_takes_transformers_defaults():
    theta, scaling = rope_from_hf(QWEN3_YARN, CONFIG)
    assert (theta, scaling) == (1e6, RopeScaling("yarn", 4.0, 32768))
    assert (scaling.beta_fast, scaling.beta_slow, scaling.mscale, scaling.truncate) == (32.0, 1.0, None, True)
    no_factor = {**QWEN3_YARN, "rope_scaling": {"rope_type": "yarn", "original_max_position_embeddings": 32768}}
    assert rope_from_hf(no_factor, CONFIG)[1].factor == 4.0  # transformers: the context's growth


@pytest.mark.parametrize("config_class,source", [("LlamaConfig", LLAMA31), ("Qwen3Config", QWEN3_YARN)])
def test_rope_written_for_transformers_reads_back_the_same(config_class, source):
    import transformers

    theta, scaling = rope_from_hf(source, CONFIG)
    written = getattr(transformers, config_class)(**rope_to_hf(theta, scaling)).to_dict()
    assert rope_from_hf(written, CONFIG) == (theta, scaling)


@pytest.mark.parametrize("rope,pattern", [
    ({"rope_type": "linear", "factor": 2.0}, r"field 'rope_scaling' = .*'linear' is not supported"),
    ({"rope_type": "dynamic", "factor": 2.0}, r"field 'rope_scaling' = .*'dynamic' is not supported"),
    ({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [2.0]}, r"field 'rope_scaling' = .*'longrope' is not supported"),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "attention_factor": 1.5},
     r"field 'rope_scaling' has 'attention_factor', which megatron-core's yarn RoPE has no option for"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
     r"field 'rope_scaling' lacks 'original_max_position_embeddings'"),
])
def test_rope_megatron_core_cannot_compute_is_refused_naming_the_field(rope, pattern):
    with pytest.raises(ConversionError, match=rf"^config\.json: {pattern}"):
        rope_from_hf({"rope_scaling": rope, "max_position_embeddings": 4096}, CONFIG)


def test_partial_rotary_refused_naming_the_field():
    with pytest.raises(ConversionError, match=r"config\.json: field 'partial_rotary_factor'"):
        rope_from_hf({"partial_rotary_factor": 0.5}, CONFIG)


@pytest.mark.parametrize("config_class,architecture,field", [
    ("Gemma2Config", "Gemma2ForCausalLM", r"'attn_logit_softcapping' = 50\.0: soft-capped attention logits"),
    ("Gemma3TextConfig", "Gemma3ForCausalLM", r"'hidden_activation' = 'gelu_pytorch_tanh'; only SwiGLU"),
    ("Gemma3Config", "Gemma3ForConditionalGeneration", r"'hidden_activation' = 'gelu_pytorch_tanh'"),
    ("GemmaConfig", "GemmaForCausalLM", r"'hidden_act' = 'gelu_pytorch_tanh'; only SwiGLU"),
    ("MixtralConfig", "MixtralForCausalLM", r"'num_local_experts' = 8: mixture-of-experts layers"),
    ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", r"'num_experts' = 60: mixture-of-experts layers"),
    ("DeepseekV3Config", "DeepseekV3ForCausalLM", r"'n_routed_experts' = 256: mixture-of-experts layers"),
])
def test_bases_still_refused_name_the_field(config_class, architecture, field):
    import transformers

    config = getattr(transformers, config_class)().to_dict()
    with pytest.raises(ConversionError, match=rf"^config\.json: field {field}"):
        adapter_for(_source(config, architecture))


@pytest.mark.parametrize("architecture,family", [
    ("LlamaForCausalLM", "llama"), ("Qwen3ForCausalLM", "qwen3"), ("MistralForCausalLM", "mistral")])
def test_the_bases_taken_have_their_adapter(architecture, family):
    import transformers

    config_class = {"llama": "LlamaConfig", "qwen3": "Qwen3Config", "mistral": "MistralConfig"}[family]
    assert adapter_for(_source(getattr(transformers, config_class)().to_dict(), architecture)).name == family


@pytest.mark.parametrize("field,value,what", [
    ("qkv_bias", True, "q/k/v biases"), ("qk_layernorm", True, "q/k norms"),
    ("rope_scaling", RopeScaling("llama3", 8.0, 8192), "RoPE scaling")])
def test_the_mistral_only_release_format_refuses_what_its_code_lacks(field, value, what):
    from megatron_solo.config.model import model_preset
    from megatron_solo.hf.adapters.solo_release import check_mistral_like

    check_mistral_like(model_preset("solo-tiny", head_dim=32))  # a head width of its own is Mistral's too
    with pytest.raises(ConversionError, match=f"decoder with {what} cannot be written in the SOLO release"):
        check_mistral_like(model_preset("solo-tiny", **{field: value}))
