"""SoloProcessor's output drives the installed transformers' FuyuForCausalLM: the image reaches the model.

transformers renamed Fuyu's ``image_patches`` to ``pixel_values`` (5.24); an unknown key is swallowed by
``**kwargs`` and the image silently ignored, so these tests compare against the embeddings built by hand.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from megatron_solo.config import model_preset
from megatron_solo.hf.adapters import decoder_adapter, exporter
from megatron_solo.hf.processor import SoloProcessor, fuyu_image_key
from megatron_solo.vocab import SOLO_CHAT_VOCAB_SIZE, VPATCH_ID, SoloTokenizer


@pytest.fixture(scope="module")
def fuyu():
    """(model, processor): a random FuyuForCausalLM with the exporter's config, and SoloProcessor."""
    from transformers import FuyuConfig, FuyuForCausalLM

    tok = SoloTokenizer()
    cfg = model_preset("solo-tiny", vocab_size=SOLO_CHAT_VOCAB_SIZE, num_layers=2)
    config = FuyuConfig(**exporter("fuyu").export_config(cfg, tok, "float32", decoder_adapter(cfg)))
    torch.manual_seed(0)
    model = FuyuForCausalLM(config).eval()
    return model, SoloProcessor(tok)


def _image(seed: int, size=(70, 45)) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy())


def _by_hand(model, inputs) -> torch.Tensor:
    """Fuyu's documented behaviour: each <vpatch> embedding replaced by the projected patch, in order."""
    ids = inputs["input_ids"]
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        patches = inputs[fuyu_image_key()].reshape(-1, 3072)
        embeds[ids == VPATCH_ID] = model.model.vision_embed_tokens(patches)
        return model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits


def test_the_patch_key_is_one_the_installed_fuyu_takes():
    import inspect

    from transformers import FuyuForCausalLM

    assert fuyu_image_key() in inspect.signature(FuyuForCausalLM.forward).parameters


@pytest.mark.parametrize("chat", [True, False])
def test_image_reaches_the_model(fuyu, chat):
    model, proc = fuyu
    inputs = proc("What is shown here?", images=_image(0), chat=chat)
    assert set(inputs) == {"input_ids", "attention_mask", fuyu_image_key()}
    with torch.no_grad():
        logits = model(**inputs).logits
        other = model(**proc("What is shown here?", images=_image(1), chat=chat)).logits
        text_only = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    torch.testing.assert_close(logits, _by_hand(model, inputs), rtol=1e-5, atol=1e-5)
    assert (logits[0, -1] - other[0, -1]).abs().max() > 1e-4  # another image, another answer
    assert (logits[0, -1] - text_only[0, -1]).abs().max() > 1e-4


def test_batch_of_different_image_counts_and_generate(fuyu):
    model, proc = fuyu
    batch = proc(["What is shown here?", "Describe these two pictures."],
                 images=[[_image(0)], [_image(1, (40, 40)), _image(2, (33, 64))]], chat=True)
    assert batch[fuyu_image_key()].shape == (1, 6 + 4 + 4, 3072)
    with torch.no_grad():
        logits = model(**batch).logits
    torch.testing.assert_close(logits, _by_hand(model, batch), rtol=1e-5, atol=1e-5)
    single = proc("What is shown here?", images=_image(0), chat=True)
    out = model.generate(**single, max_new_tokens=3, do_sample=False, pad_token_id=2, eos_token_id=None)
    assert out.shape == (1, single["input_ids"].shape[1] + 3)
    with torch.no_grad():
        first = model(**single).logits[0, -1].argmax()
    assert out[0, single["input_ids"].shape[1]] == first
