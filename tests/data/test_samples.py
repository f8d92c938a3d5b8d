"""Sample kinds -> token streams with loss flags (real Mistral tokenizer)."""

import numpy as np
import pytest
from PIL import Image

from megatron_solo.data import samples as sm
from megatron_solo.vocab import SoloTokenizer


@pytest.fixture(scope="module")
def tok():
    return SoloTokenizer()


def _img(w=64, h=32):
    return sm.ImageSegment(Image.new("RGB", (w, h), (10, 20, 30)))


def _stream(sample):
    meta = sm.segments_meta(sample, [f"{i}.jpg" for i in range(10)])
    text = np.array([i for s in sample.segments if isinstance(s, sm.TextSegment) for i in s.ids])
    return sm.expand(meta, text)


def test_caption_stream(tok):
    s = sm.caption_sample("k", _img(64, 32), "  a red car  ", tok)
    ids, loss, images = _stream(s)
    block = tok.image_tokens(1, 2)
    cap = tok.encode("a red car")
    assert ids.tolist() == [1] + block + cap + [2]
    assert loss.tolist() == [False] * (1 + len(block)) + [True] * (len(cap) + 1)
    assert images == [(1, 1 + len(block), "0.jpg", 1, 2)]
    assert len(s) == len(ids) and s.image_tokens() == len(block)


def test_image_block_matches_tokenizer(tok):
    for rows, cols in [(1, 1), (3, 5), (15, 32), (32, 1)]:
        assert sm.image_block(rows, cols).tolist() == tok.image_tokens(rows, cols)
    quirk = sm.VisionIds.from_tokenizer(SoloTokenizer(close_with_vision=True))
    assert sm.image_block(2, 2, quirk)[-1] == 32000


def test_classification(tok):
    names = {"n01": "goldfish", "n02": "tabby cat"}
    s = sm.classification_sample("k", _img(), "n02", tok, names, "a photo of a {}.")
    assert tok.decode(_stream(s)[0]).endswith("a photo of a tabby cat.</s>")
    with pytest.raises(sm.SkipSample) as err:
        sm.classification_sample("k", _img(), "n03", tok, names)
    assert err.value.reason == "missing_class_name"
    assert sm.classification_sample("k", _img(), "zebra", tok).segments[-1].ids[:-1] == tok.encode("zebra")


def test_empty_caption_and_text(tok):
    for fn, arg in ((sm.caption_sample, ("k", _img(), "   ", tok)), (sm.text_sample, ("k", "\n", tok))):
        with pytest.raises(sm.SkipSample) as err:
            fn(*arg)
        assert err.value.reason in ("empty_caption", "empty_text")


def test_text_and_interleaved(tok):
    t = sm.text_sample("k", "Hello world.", tok)
    ids, loss, _ = _stream(t)
    assert ids.tolist() == [1] + tok.encode("Hello world.") + [2] and not loss[0] and loss[1:].all()
    doc = sm.interleaved_sample("k", ["First part.", _img(32, 32), "", "Second part.", _img(32, 64)], tok)
    ids, loss, images = _stream(doc)
    assert len(images) == 2 and images[0][0] == 1 + len(tok.encode("First part."))
    assert not loss[images[0][0]:images[0][1]].any() and loss[-1]
    assert tok.decode(ids).count("<vision>") == 2


def test_conversation_template_and_loss(tok):
    turns = [
        {"from": "human", "value": "<image>\nWhat is shown?"},
        {"from": "gpt", "value": "A cat."},
        {"from": "human", "value": "What colour?"},
        {"from": "gpt", "value": "Grey."},
    ]
    s = sm.conversation_sample("k", [_img()], turns, tok)
    ids, loss, images = _stream(s)
    text = tok.decode(ids)
    block = "<vision>" + "<vpatch>" * 2 + "</vision>"
    assert text == block + "<s>[INST] What is shown? [/INST] A cat.</s>[INST] What colour? [/INST] Grey.</s>"
    # later turns are encoded on their own, as Mistral's v1 template does ("▁[INST]" after </s>)
    second = tok.encode("[INST] What colour? [/INST]")
    start = ids.tolist().index(2) + 1
    assert ids[start:start + len(second)].tolist() == second
    trained = tok.decode(ids[loss])
    assert trained == "A cat.</s>Grey.</s>"
    assert images[0][0] == 0  # image block first, before <s>


def test_conversation_roles_and_system(tok):
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello"}]
    ids, loss, _ = _stream(sm.conversation_sample("k", [], turns, tok))
    assert tok.decode(ids) == "<s>[INST] Be brief.\n\nHi [/INST] Hello</s>"


@pytest.mark.parametrize("turns", [
    [{"from": "human", "value": "Only a question"}],
    [{"from": "human", "value": "q"}, {"from": "gpt", "value": "   "}],
    [],
])
def test_conversation_without_answer_skipped(tok, turns):
    with pytest.raises(sm.SkipSample) as err:
        sm.conversation_sample("k", [], turns, tok)
    assert err.value.reason == "no_assistant_turn"


def test_layout_and_expand_checks():
    meta = [{"text": 2, "loss": 0}, {"image": "0.jpg", "rows": 2, "cols": 3}, {"text": 3, "loss": 1}]
    assert sm.layout(meta) == (5, 9, [(2, 11)])
    with pytest.raises(ValueError):
        sm.expand(meta, np.array([1, 2, 3]))
