"""The bases a SOLO run starts from today, each as a tiny random model of transformers' own class with its real
features: Llama-3.2 (``llama3`` RoPE scaling, tied), Qwen3 (q/k norms, 4 heads of 128 at width 64, YaRN) and
Mistral-NeMo (heads of 32 at width 64). Each imports at TP1 and TP2 with transformers' logits, past its original
context too, trains through ``pretrain --init-from`` and exports to a stock Fuyu of its own text class.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from megatron_solo.config.model import RopeScaling
from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.hf.exporter import export_checkpoint
from megatron_solo.hf.importer import import_hf, plan_import
from megatron_solo.hf.processor import SoloProcessor, fuyu_image_key, fuyu_to_solo_patches
from megatron_solo.vocab import default_tokenizer_path, load_tokenizer
from tests.harness.ckpt_models import save_hf, small_hf_model
from tests.harness.ckpt_workers import (
    checkpoint_predictions,
    import_and_logits,
    megatron_logits,
    pretrain_from,
)
from tests.harness.worlds import each_case, run_world

# The TP2 imports run in one two-rank world; the TP1 imports, runs and exports run in this process.
pytestmark = [pytest.mark.multiprocess, pytest.mark.usefixtures("conversions_here")]

ORIGINAL_CONTEXT = 64  # the longest pre-training context of the scaled bases below (llama3: 64, yarn: 32)
SEQ = 80  # tokens compared with transformers: past it
PROMPT = ("Describe the picture in detail: which shapes it holds, which colours they have, where each one lies, "
          "how large it is and whether it touches another, what the background looks like and how bright it is, "
          "then say in one word what the whole scene shows, and in one more word how it makes you feel.")


@dataclasses.dataclass(frozen=True)
class Base:
    """A tiny stand-in of one base: small_hf_model's arguments and what its import must record."""

    kind: str
    text_model: str  # the class of the export's text model
    hf: dict
    expect: dict  # SoloModelConfig fields


BASES = {
    # Llama-3.2-1B's RoPE (theta 500000, llama3 factor 32, low/high 1/4), pre-trained context shrunk from
    # 8192 to 64: its heads of 16 then rotate at wavelengths 6.3 (kept), 33 (blended) and 168+ (stretched)
    "llama3": Base("llama", "LlamaModel", dict(tied=True, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}), dict(
        head_dim=None, qk_layernorm=False, untie_embeddings=False, decoder_family="llama",
        rope_scaling=RopeScaling("llama3", 32.0, 64, 1.0, 4.0))),
    # Qwen3-0.6B's heads of 128 (not hidden / heads), q/k norms, theta 1e6 and tied embeddings, with the YaRN
    # its model card gives for long inputs (factor 4 over 32768), here 16 over 32
    "qwen3": Base("qwen3", "Qwen3Model", dict(tied=True, head_dim=128, rope_theta=1000000.0, rope_scaling={
        "rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 32}), dict(
        head_dim=128, qk_layernorm=True, untie_embeddings=False, decoder_family="qwen3",
        rope_scaling=RopeScaling("yarn", 16.0, 32))),
    # Mistral-NeMo-12B: 32 heads of 128 at width 5120, theta 1e6, no sliding window; here 4 heads of 32 at 64
    "mistral_nemo": Base("mistral", "MistralModel", dict(head_dim=32, rope_theta=1000000.0), dict(
        head_dim=32, qk_layernorm=False, untie_embeddings=True, decoder_family="mistral", rope_scaling=None)),
}


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, dict]:
    """Per base: its HF model and folder, the TP1 import and its config, and the TP2 import's logits.

    The TP2 imports, each followed by its logits, share one two-rank world.
    """
    root = tmp_path_factory.mktemp("bases")
    ids = torch.randint(0, 32000, (1, SEQ), generator=torch.Generator().manual_seed(3))
    torch.save(ids, root / "ids.pt")
    out, cases = {}, []
    for name, base in BASES.items():
        model = small_hf_model(base.kind, layers=2, **base.hf)
        hf = save_hf(model, root / name / "hf")
        cfg = import_hf(hf, root / name / "tp1", tokenizer=default_tokenizer_path(), progress=False)
        tp2 = ParallelConfig(tensor_parallel=2)
        plan = plan_import(hf, tp2, tokenizer=default_tokenizer_path())
        plan.write_files(root / name / "tp2", tp2)
        cases.append((str(hf), str(root / name / "tp2"), dataclasses.asdict(plan.cfg), str(root / "ids.pt"),
                      str(root / name / "tp2_logits.pt"), 2))
        out[name] = {"model": model, "hf": hf, "tp1": root / name / "tp1", "cfg": cfg,
                     "tp2_logits": root / name / "tp2_logits.pt", "ids": ids, "ids_file": root / "ids.pt"}
    run_world(each_case, 2, import_and_logits, cases)
    return out


def _reference(base: dict, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return base["model"](ids).logits


@pytest.mark.parametrize("name", BASES)
def test_import_records_what_the_base_varies(bases, name):
    cfg = bases[name]["cfg"]
    assert {k: getattr(cfg, k) for k in BASES[name].expect} == BASES[name].expect
    saved = json.loads((bases[name]["tp1"] / "solo_model.json").read_text())["model"]
    assert saved["head_dim"] == cfg.head_dim and saved["qk_layernorm"] == cfg.qk_layernorm
    assert saved["rope_scaling"] == (cfg.rope_scaling and dataclasses.asdict(cfg.rope_scaling))


@pytest.mark.parametrize("name", BASES)
def test_logits_equal_transformers_at_tp1_past_the_original_context(bases, name, tmp_path):
    base = bases[name]
    run_world(megatron_logits, 1, str(base["tp1"]), str(base["ids_file"]), str(tmp_path / "logits.pt"), 1)
    ours = torch.load(tmp_path / "logits.pt")[..., :32000]
    ref = _reference(base, base["ids"])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    scaling = base["cfg"].rope_scaling
    if scaling is not None:  # the scaling shows: the same weights with plain RoPE are far off
        plain = _plain_rope_logits(base, base["ids"])
        assert (plain - ref).abs().max() > 1e-3


def _plain_rope_logits(base: dict, ids: torch.Tensor) -> torch.Tensor:
    """Logits of the base's weights in its own class with the RoPE scaling taken out."""
    model = base["model"]
    config = model.config.__class__.from_dict({**model.config.to_dict(), "rope_scaling": None,
                                               "rope_parameters": {"rope_type": "default",
                                                                   "rope_theta": base["cfg"].rotary_base}})
    plain = type(model)(config).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        return plain(ids).logits


@pytest.mark.parametrize("name", BASES)
def test_logits_equal_transformers_at_tp2(bases, name):
    base = bases[name]
    ours = torch.load(base["tp2_logits"])[..., :32000]
    torch.testing.assert_close(ours, _reference(base, base["ids"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", BASES)
def test_pretrained_from_the_base_exports_to_a_fuyu_of_its_own_class(bases, name, quickstart_shards, tmp_path):
    from PIL import Image
    from transformers import AutoModelForCausalLM

    base = bases[name]
    run = tmp_path / "stage1"
    images, texts = quickstart_shards
    run_world(pretrain_from, 1, images, texts, str(run), 3, str(base["tp1"]), str(tmp_path / "losses.json"))
    losses = json.loads((tmp_path / "losses.json").read_text())["losses"]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    trained = json.loads((run / "solo_model.json").read_text())["model"]
    assert {k: trained[k] for k in ("head_dim", "qk_layernorm", "decoder_family")} == {
        k: BASES[name].expect[k] for k in ("head_dim", "qk_layernorm", "decoder_family")}

    proc = SoloProcessor(load_tokenizer(run / "tokenizer"))
    pixels = torch.randint(0, 256, (45, 70, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    inputs = proc(PROMPT, images=Image.fromarray(pixels.numpy()), chat=True)
    assert inputs["input_ids"].shape[1] > ORIGINAL_CONTEXT  # past the original context here too
    torch.save({"input_ids": inputs["input_ids"], "patches": fuyu_to_solo_patches(inputs[fuyu_image_key()])},
               tmp_path / "inputs.pt")
    run_world(checkpoint_predictions, 1, str(run), str(tmp_path / "inputs.pt"), str(tmp_path / "pred.pt"), 4)
    pred = torch.load(tmp_path / "pred.pt")

    export = export_checkpoint(run, tmp_path / "fuyu", progress=False)
    fuyu = AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32).eval()
    assert type(fuyu.model.language_model).__name__ == BASES[name].text_model
    if BASES[name].expect["qk_layernorm"]:  # the q/k norms trained and exported
        after = fuyu.model.language_model.layers[0].self_attn.q_norm.weight
        assert not torch.equal(after, base["model"].model.layers[0].self_attn.q_norm.weight)
    with torch.no_grad():
        logits = fuyu(**inputs).logits
    torch.testing.assert_close(logits, pred["logits"], rtol=1e-5, atol=1e-5)
    out = fuyu.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(out[:, inputs["input_ids"].shape[1]:], pred["greedy"])
