"""HF Mistral/Llama -> Megatron (TP2 PP2) -> HF round trips, Fuyu export logits, SOLO-7B format."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.hf.exporter import export_checkpoint
from megatron_solo.hf.importer import import_hf
from megatron_solo.hf.processor import SoloProcessor, fuyu_image_key
from megatron_solo.vocab import VPATCH_ID, default_tokenizer_path, load_tokenizer
from tests.harness.ckpt_models import decoder_weights, load_safetensors_dir, save_hf, small_hf_model
from tests.harness.ckpt_workers import trained_export

# Conversions at TP x PP > 1 run in worker processes (gloo), one-rank ones in this process; not part of
# the one-GPU check.
pytestmark = [pytest.mark.multiprocess, pytest.mark.usefixtures("conversions_here")]

SOLO_VOCAB = 32000 + 1029 + 2  # base + SOLO tokens + chat tokens


def _import(tmp, kind, tied=False, tp=2, pp=2):
    hf_dir = save_hf(small_hf_model(kind, tied=tied), tmp / f"hf_{kind}", max_shard_size="2MB")
    out = tmp / f"mg_{kind}"
    cfg = import_hf(hf_dir, out, ParallelConfig(tp, pp), tokenizer=default_tokenizer_path(), progress=False)
    return hf_dir, out, cfg


@pytest.fixture(scope="module")
def mistral(small_mistral_hf, small_mistral_tp2pp2):
    """A random Mistral imported at TP2 PP2 (the session's, shared with other modules; read only)."""
    return (small_mistral_hf, *small_mistral_tp2pp2)


def _check_round_trip(hf_dir, export_dir, tied):
    orig = load_safetensors_dir(hf_dir)
    out = load_safetensors_dir(export_dir)
    a, b = decoder_weights(orig), decoder_weights(out, "model.language_model.")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    embed = out["model.language_model.embed_tokens.weight"]
    assert embed.shape[0] == SOLO_VOCAB
    assert torch.equal(embed[:32000], orig["model.embed_tokens.weight"])
    head = orig["model.embed_tokens.weight"] if tied else orig["lm_head.weight"]
    assert torch.equal(out["lm_head.weight"][:32000], head)
    new_rows = embed[32000:]
    assert abs(new_rows.std().item() - 0.02) < 0.002  # fresh SOLO rows, N(0, 0.02)
    assert torch.equal(out["model.vision_embed_tokens.bias"], embed[VPATCH_ID])
    assert out["model.vision_embed_tokens.weight"].shape == (64, 3072)


def test_mistral_round_trip_tp2pp2_bit_identical(mistral, tmp_path):
    from transformers import AutoModelForCausalLM

    hf_dir, mg, cfg = mistral
    assert (cfg.num_query_groups, cfg.vocab_size, cfg.vpatch_token_id) == (2, SOLO_VOCAB, VPATCH_ID)
    meta = json.loads((mg / "solo_model.json").read_text())
    assert (meta["tensor_parallel"], meta["pipeline_parallel"]) == (2, 2)
    assert load_tokenizer(mg / "tokenizer").vpatch_id == VPATCH_ID
    export = export_checkpoint(mg, tmp_path / "fuyu", progress=False)
    _check_round_trip(hf_dir, export, tied=False)
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == "fuyu" and config["text_config"]["model_type"] == "mistral"
    assert (config["hidden_size"], config["vocab_size"], config["image_token_id"]) == (64, SOLO_VOCAB, VPATCH_ID)
    assert config["patch_size"] == 32
    model = AutoModelForCausalLM.from_pretrained(str(export))  # stock transformers, no remote code
    assert type(model).__name__ == "FuyuForCausalLM"


def test_tied_llama_round_trip_tp2pp2(tmp_path):
    from transformers import AutoModelForCausalLM

    hf_dir, mg, cfg = _import(tmp_path, "llama", tied=True)
    assert not cfg.untie_embeddings and cfg.rotary_base == 50000.0 and cfg.decoder_family == "llama"
    export = export_checkpoint(mg, tmp_path / "fuyu", progress=False)
    _check_round_trip(hf_dir, export, tied=True)
    assert json.loads((export / "config.json").read_text())["text_config"]["model_type"] == "llama"
    fuyu = AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32).eval()
    llama = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    ids = torch.tensor([[1, 415, 2936, 9060, 285, 1142, 28705]])
    with torch.no_grad():  # text only: the export's text model is transformers' own Llama
        torch.testing.assert_close(fuyu(ids).logits[..., :32000], llama(ids).logits, rtol=1e-5, atol=1e-5)


def _image(seed: int, size=(70, 45)) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def test_fuyu_export_reproduces_solo_logits_and_greedy(mistral, tmp_path):
    from transformers import AutoModelForCausalLM

    _, mg, _ = mistral
    proc = SoloProcessor(load_tokenizer(mg / "tokenizer"))
    inputs = proc("What is shown here?", images=_image(0), chat=True)
    assert inputs[fuyu_image_key()].shape == (1, 3 * 2, 3072)  # 70x45 -> 96x64: 2 rows x 3 cols
    export, pred = trained_export(mg, tmp_path, inputs, 3, 5)
    model = AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32).eval()
    proc2 = SoloProcessor.from_pretrained(export)
    again = proc2("What is shown here?", images=_image(0), chat=True)
    assert torch.equal(again["input_ids"], inputs["input_ids"])
    with torch.no_grad():
        logits = model(**inputs).logits
    ref = pred["logits"]
    assert logits.shape == ref.shape
    err = (logits - ref).abs().max().item()
    assert err <= 1e-5 * max(1.0, ref.abs().max().item()), err
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(out[:, inputs["input_ids"].shape[1]:], pred["greedy"])
    # Batched with left padding: the same sample's last-position logits as alone.
    batch = proc2(["What is shown here?", "Describe this picture in a few words please."],
                  images=[[_image(0)], [_image(1, (40, 40)), _image(2, (33, 64))]], chat=True)
    assert batch[fuyu_image_key()].shape == (1, 6 + 4 + 4, 3072)  # 40x40 and 33x64 -> 64x64 each
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][1].all()
    with torch.no_grad():
        batched = model(**batch).logits
    torch.testing.assert_close(batched[0, -1], logits[0, -1], rtol=1e-4, atol=1e-4)


def test_solo_release_format_round_trip(mistral, tmp_path):
    _, mg, _ = mistral
    first = export_checkpoint(mg, tmp_path / "solo1", fmt="solo", progress=False)
    config = json.loads((first / "config.json").read_text())
    assert config["architectures"] == ["SoloForCausalLM"] and config["model_type"] == "mistral"
    cfg = import_hf(first, tmp_path / "mg2", ParallelConfig(tensor_parallel=1, pipeline_parallel=2), progress=False)
    assert cfg.vocab_size == SOLO_VOCAB and cfg.vpatch_token_id == VPATCH_ID
    second = export_checkpoint(tmp_path / "mg2", tmp_path / "solo2", fmt="solo", progress=False)
    a, b = load_safetensors_dir(first), load_safetensors_dir(second)
    assert a.keys() == b.keys() and "model.embed_vision_patch.weight" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
