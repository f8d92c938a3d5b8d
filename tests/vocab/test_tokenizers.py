"""SoloTokenizer: real Mistral SentencePiece model, SOLO special ids, HF export, compatibility checks."""

import pytest

from megatron_solo.vocab import SoloTokenizer, TokenizerMismatchError


@pytest.fixture(scope="module")
def tok():
    return SoloTokenizer()


def test_special_ids(tok):
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.vision_id == 32000 and tok.vpatch_id == 32001 and tok.vrow_sep_id == 32002
    assert tok.vframe_sep_id == 32003 and tok.vision_end_id == 32004
    assert tok.loc_ids[0] == 32005 and tok.loc_ids[-1] == 33028
    assert (tok.im_start_id, tok.im_end_id) == (33029, 33030)
    assert tok.vocab_size == 33031
    assert SoloTokenizer(chat_tokens=False).vocab_size == 33029  # the release's Megatron vocabulary


def test_encode_decode_roundtrip(tok):
    text = "A photo of a golden retriever, 3 years old."
    ids = tok.encode(text)
    assert all(i < 32000 for i in ids)
    assert tok.decode(ids) == text
    assert tok.encode(text, bos=True, eos=True) == [1] + ids + [2]
    # text cannot forge special ids
    assert all(i < 32000 for i in tok.encode("<vision><vpatch></vision>"))
    assert tok.decode([1, 32000, 32001, 32004]).endswith("<vision><vpatch></vision>")


def test_image_tokens(tok):
    block = tok.image_tokens(2, 3)
    assert block == [32000, 32001, 32001, 32001, 32002, 32001, 32001, 32001, 32004]
    assert len(block) == tok.image_token_count(2, 3)
    assert tok.image_tokens(1, 1) == [32000, 32001, 32004]
    assert tok.image_tokens(2, 1, close_with_vision=True)[-1] == 32000
    quirky = SoloTokenizer(close_with_vision=True)
    assert quirky.image_tokens(15, 32)[-1] == 32000 and quirky.image_close_id == 32000
    assert len(tok.image_tokens(15, 32)) == 15 * 32 + 14 + 2


def test_check_compatible(tok):
    tok.check_compatible(33031)
    tok.check_compatible(33152, pad_multiple=128)
    tok.check_compatible(33031, special_ids={"<vpatch>": 32001, "</s>": 2})
    with pytest.raises(TokenizerMismatchError, match="33029 rows"):
        tok.check_compatible(33029)
    with pytest.raises(TokenizerMismatchError, match="multiple of 128"):
        tok.check_compatible(33280, pad_multiple=128)
    with pytest.raises(TokenizerMismatchError, match="<vpatch>"):
        tok.check_compatible(33031, special_ids={"<vpatch>": 32000})
    with pytest.raises(TokenizerMismatchError, match="lacks"):
        tok.check_compatible(33031, special_ids={"<image>": 5})


def test_save_pretrained_loads_in_transformers(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(hf) == tok.vocab_size
    for name, idx in tok.special_ids.items():
        assert hf.convert_tokens_to_ids(name) == idx, name
    text = "Describe the image in detail."
    assert hf(text, add_special_tokens=False).input_ids == tok.encode(text)
    assert hf.decode([32000, 32001, 32004]) == "<vision><vpatch></vision>"
    again = SoloTokenizer.from_pretrained(tmp_path)
    assert again.vocab_size == tok.vocab_size and again.encode(text) == tok.encode(text)
