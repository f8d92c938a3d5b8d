"""The SOLO-7B release's tokenizer.model: Mistral's 32000 pieces with SOLO's tokens appended as pieces.

Accepted when the extra pieces are exactly SOLO's tokens at their ids (then the chat tokens); anything else
is refused naming the piece. Text never becomes a special id, even though the pieces are in the model.
"""

from __future__ import annotations

import json

import pytest
import torch

from megatron_solo.vocab import (
    SOLO_CHAT_VOCAB_SIZE,
    SOLO_VOCAB_SIZE,
    VISION_START_ID,
    VPATCH_ID,
    SoloTokenizer,
    TokenizerMismatchError,
    default_tokenizer_path,
    load_tokenizer,
    solo_token_list,
)

TEXT = "A caption that says <vision><vpatch></vision> and <loc_7> and <|im_start|> in plain text."


def _sentencepiece(path, pieces: list[str], kind: str = "USER_DEFINED"):
    """Mistral's SentencePiece model with ``pieces`` appended (as the release did)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(open(default_tokenizer_path(), "rb").read())
    for piece in pieces:
        new = proto.pieces.add()
        new.piece, new.score, new.type = piece, 0.0, pb.ModelProto.SentencePiece.Type.Value(kind)
    proto.trainer_spec.vocab_size = len(proto.pieces)
    path.write_bytes(proto.SerializeToString())
    return path


@pytest.mark.parametrize("chat", [False, True], ids=["solo_tokens", "solo_and_chat_tokens"])
def test_release_sentencepiece_is_accepted_and_text_stays_text(tmp_path, chat):
    import sentencepiece as spm

    release = _sentencepiece(tmp_path / "tokenizer.model", solo_token_list(chat_tokens=chat))
    raw = spm.SentencePieceProcessor(model_file=str(release))
    assert raw.get_piece_size() == (SOLO_CHAT_VOCAB_SIZE if chat else SOLO_VOCAB_SIZE)
    assert VISION_START_ID in raw.encode(TEXT)  # SentencePiece alone would forge an image block from text

    base = SoloTokenizer(chat_tokens=chat)
    tok = SoloTokenizer(release, chat_tokens=chat, close_with_vision=True)
    assert (tok.vocab_size, tok.vision_id, tok.vpatch_id) == (base.vocab_size, VISION_START_ID, VPATCH_ID)
    assert tok.special_ids == base.special_ids
    ids = tok.encode(TEXT)
    assert ids == base.encode(TEXT) and max(ids) < VISION_START_ID
    assert tok.encode_many([TEXT]) == [ids]
    assert tok.decode(ids) == TEXT
    assert tok.decode([VISION_START_ID, VPATCH_ID, 1]) == "<vision><vpatch><s>"
    assert tok.image_tokens(1, 2)[-1] == VISION_START_ID  # the release's SFT quirk is kept

    saved = tok.save_pretrained(tmp_path / "saved")
    assert spm.SentencePieceProcessor(model_file=f"{saved}/tokenizer.model").get_piece_size() == 32000
    again = load_tokenizer(saved)
    assert again.special_ids == tok.special_ids and again.encode(TEXT) == ids and again.close_with_vision

    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(saved)
    plain = "A caption in plain text, with numbers 1234 and accents: café."
    assert hf(plain, add_special_tokens=False).input_ids == base.encode(plain)
    assert hf.convert_tokens_to_ids(solo_token_list(chat)) == list(range(32000, tok.vocab_size))


@pytest.mark.parametrize("pieces,message", [
    (["<vision>", "<vrow_sep>"], r"piece 32001 is '<vrow_sep>' but SOLO's token at that id is '<vpatch>'"),
    (["<image>"], r"piece 32000 is '<image>' but SOLO's token at that id is '<vision>'"),
    (solo_token_list(False)[:5], r"has 32005 pieces: SOLO's tokens after Mistral's 32000 are incomplete"),
    (solo_token_list(True)[:-1], r"has 33030 pieces: SOLO's tokens after Mistral's 32000 are incomplete"),
    (solo_token_list(True) + ["<extra>"], r"has 33032 pieces; SOLO's special ids assume Mistral's 32000"),
])
def test_other_appended_pieces_are_refused(tmp_path, pieces, message):
    bad = _sentencepiece(tmp_path / "tokenizer.model", pieces)
    with pytest.raises(TokenizerMismatchError, match=message):
        SoloTokenizer(bad)


def test_not_a_sentencepiece_model(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"\x00not a model")
    with pytest.raises(TokenizerMismatchError, match="not a SentencePiece model"):
        SoloTokenizer(tmp_path / "tokenizer.model")


@pytest.mark.multiprocess
def test_release_with_its_sentencepiece_imports(tmp_path):
    """A SoloForCausalLM folder whose only tokenizer is the 33029-piece tokenizer.model."""
    from safetensors.torch import load_file, save_file

    from megatron_solo.config.parallel import ParallelConfig
    from megatron_solo.hf.importer import import_hf
    from tests.harness.ckpt_models import save_hf, small_hf_model

    release = save_hf(small_hf_model("mistral", vocab=SOLO_VOCAB_SIZE, layers=2), tmp_path / "release")
    weights = load_file(release / "model.safetensors")
    weights["model.embed_vision_patch.weight"] = torch.randn(64, 3072) * 0.02
    save_file(weights, release / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((release / "config.json").read_text())
    (release / "config.json").write_text(json.dumps({**config, "architectures": ["SoloForCausalLM"]}))
    _sentencepiece(release / "tokenizer.model", solo_token_list(chat_tokens=False))

    cfg = import_hf(release, tmp_path / "mg", ParallelConfig(), progress=False)
    assert (cfg.vocab_size, cfg.vpatch_token_id) == (SOLO_VOCAB_SIZE, VPATCH_ID)
    tok = load_tokenizer(tmp_path / "mg" / "tokenizer")
    assert tok.vocab_size == SOLO_VOCAB_SIZE and tok.vpatch_id == VPATCH_ID and max(tok.encode(TEXT)) < 32000
