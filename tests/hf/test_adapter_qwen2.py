"""Qwen2 (q/k/v biases, tied embeddings) as a SOLO start: import at TP1/TP2, train, export to stock Fuyu."""

from __future__ import annotations

import json
import math

import pytest
import torch

from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.hf.adapters import adapter_for
from megatron_solo.hf.exporter import export_checkpoint
from megatron_solo.hf.importer import import_hf
from megatron_solo.hf.processor import SoloProcessor
from megatron_solo.hf.source import ConversionError, read_hf_dir
from megatron_solo.vocab import VPATCH_ID, default_tokenizer_path, load_tokenizer
from tests.harness.ckpt_models import decoder_weights, load_safetensors_dir, save_hf, small_hf_model
from tests.harness.ckpt_workers import megatron_logits, trained_export
from tests.harness.worlds import run_world

# The TP2 import and run start worker processes (gloo); one-rank worlds run in this process.
pytestmark = [pytest.mark.multiprocess, pytest.mark.usefixtures("conversions_here")]

TEXT_IDS = torch.tensor([[1, 415, 2936, 9060, 285, 1142, 28705, 28770, 28734, 28723, 851, 349, 264, 1369]])


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    """(HF model, its folder, the import at TP2) of a random tied Qwen2 with non-zero q/k/v biases."""
    tmp = tmp_path_factory.mktemp("qwen2")
    model = small_hf_model("qwen2", tied=True)
    hf_dir = save_hf(model, tmp / "hf", max_shard_size="2MB")
    mg = tmp / "mg_tp2"
    cfg = import_hf(hf_dir, mg, ParallelConfig(tensor_parallel=2), tokenizer=default_tokenizer_path(),
                    progress=False)
    return model, hf_dir, mg, cfg


def test_qwen2_config_maps_biases_tied_embeddings_and_family(qwen2):
    _, _, mg, cfg = qwen2
    assert (cfg.qkv_bias, cfg.decoder_family, cfg.untie_embeddings) == (True, "qwen2", False)
    assert cfg.rotary_base == 100000.0 and cfg.sliding_window is None
    assert cfg.vpatch_token_id == VPATCH_ID  # the SOLO tokens follow the 32000 source rows, as for Mistral
    assert json.loads((mg / "solo_model.json").read_text())["model"]["qkv_bias"] is True


@pytest.mark.parametrize("tp", [1, 2])
def test_qwen2_logits_equal_transformers_at_tp1_and_tp2(qwen2, tmp_path, tp):
    model, hf_dir, mg, _ = qwen2
    if tp == 1:
        mg = tmp_path / "mg_tp1"
        import_hf(hf_dir, mg, ParallelConfig(), tokenizer=default_tokenizer_path(), progress=False)
    torch.save(TEXT_IDS, tmp_path / "ids.pt")
    run_world(megatron_logits, tp, str(mg), str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt"), tp)
    ours = torch.load(tmp_path / "logits.pt")[..., :32000]
    with torch.no_grad():
        ref = model(TEXT_IDS).logits
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_qwen2_exports_to_stock_fuyu_with_a_qwen2_text_model(qwen2, tmp_path):
    from transformers import AutoModelForCausalLM

    model, hf_dir, mg, _ = qwen2
    export = export_checkpoint(mg, tmp_path / "fuyu", progress=False)
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == "fuyu" and config["text_config"]["model_type"] == "qwen2"
    orig, out = load_safetensors_dir(hf_dir), load_safetensors_dir(export)
    a, b = decoder_weights(orig), decoder_weights(out, "model.language_model.")
    assert a.keys() == b.keys() and "layers.0.self_attn.k_proj.bias" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(out["lm_head.weight"][:32000], orig["model.embed_tokens.weight"])  # tied, written out
    fuyu = AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32).eval()
    assert type(fuyu.model.language_model).__name__ == "Qwen2Model"
    with torch.no_grad():  # text only: the export is transformers' own Qwen2 on the source rows
        torch.testing.assert_close(fuyu(TEXT_IDS).logits[..., :32000], model(TEXT_IDS).logits, rtol=1e-5, atol=1e-5)


def test_qwen2_trained_as_solo_start_matches_its_fuyu_export(qwen2, tmp_path):
    from PIL import Image
    from transformers import AutoModelForCausalLM

    _, _, mg, _ = qwen2
    proc = SoloProcessor(load_tokenizer(mg / "tokenizer"))
    pixels = torch.randint(0, 256, (45, 70, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    inputs = proc("What is shown here?", images=Image.fromarray(pixels.numpy()), chat=True)
    export, pred = trained_export(mg, tmp_path, inputs, 3, 4)
    fuyu = AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = fuyu(**inputs).logits
    err = (logits - pred["logits"]).abs().max().item()
    assert err <= 1e-5 * max(1.0, pred["logits"].abs().max().item()), err
    out = fuyu.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(out[:, inputs["input_ids"].shape[1]:], pred["greedy"])


def test_qwen2_import_pretrains_as_a_solo_start_and_exports(qwen2, quickstart_shards, tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.harness import training as T

    _, hf_dir, mg, _ = qwen2
    images, texts = quickstart_shards
    run = tmp_path / "stage1"
    run_world(T.run_init_job, 1, images, texts, str(run), 3, str(mg), str(tmp_path / "losses.json"))
    losses = json.loads((tmp_path / "losses.json").read_text())["losses"]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    model = json.loads((run / "solo_model.json").read_text())["model"]
    assert (model["decoder_family"], model["qkv_bias"], model["hidden_size"]) == ("qwen2", True, 64)
    export = export_checkpoint(run, tmp_path / "fuyu", progress=False)
    fuyu = AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32)
    assert type(fuyu.model.language_model).__name__ == "Qwen2Model"
    before = load_safetensors_dir(hf_dir)["model.layers.0.self_attn.q_proj.bias"]
    after = fuyu.model.language_model.layers[0].self_attn.q_proj.bias.detach()
    assert after.shape == before.shape and not torch.equal(after, before)  # the biases trained


def test_qwen2_refused_by_the_mistral_only_release_format(qwen2, tmp_path):
    _, _, mg, _ = qwen2
    with pytest.raises(ConversionError, match="q/k/v biases cannot be written in the SOLO release"):
        export_checkpoint(mg, tmp_path / "solo", fmt="solo", progress=False)
    assert not (tmp_path / "solo").exists()


def _qwen2_source(tmp_path, **window):
    model = small_hf_model("qwen2", layers=2)
    model.config.update(window)
    model.config.layer_types = None
    return read_hf_dir(save_hf(model, tmp_path / "hf"))


def test_qwen2_sliding_window_on_every_layer_or_refused(tmp_path):
    from megatron_solo.vocab import SoloTokenizer

    src = _qwen2_source(tmp_path, use_sliding_window=True, sliding_window=16, max_window_layers=0)
    adapter = adapter_for(src)
    cfg, _ = adapter.config_from_hf(src, 1029)
    assert cfg.sliding_window == 16
    text = adapter.config_to_hf(cfg, SoloTokenizer(), "float32")
    assert (text["use_sliding_window"], text["sliding_window"], text["max_window_layers"]) == (True, 16, 0)
    mixed = _qwen2_source(tmp_path / "mixed", use_sliding_window=True, sliding_window=16, max_window_layers=1)
    with pytest.raises(ConversionError, match="sliding window covers 1 of 2 layers"):
        adapter.config_from_hf(mixed, 1029)
