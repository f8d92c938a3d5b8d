"""Tokenizers for converted models: SoloTokenizer (Mistral base) or any HF tokenizer plus the SOLO tokens.

The SOLO tokens are appended right after the base vocabulary, in the release's order, so a base of
V pieces gets ``<vision>`` = V, ``<vpatch>`` = V + 1, ... (V = 32000 reproduces SOLO-7B's ids).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from megatron_solo.checkpoint.hf_source import ConversionError
from megatron_solo.data.tokenizer import (
    BASE_VOCAB,
    CHAT_TOKENS,
    NUM_LOC,
    VISION_TOKENS,
    SoloTokenizer,
    TokenizerMismatchError,
)

META_FILE = "solo_tokenizer.json"


def solo_token_list(chat_tokens: bool = True) -> list[str]:
    """The SOLO tokens in id order."""
    out = list(VISION_TOKENS) + [f"<loc_{i}>" for i in range(1, NUM_LOC + 1)]
    return out + (list(CHAT_TOKENS) if chat_tokens else [])


class HFSoloTokenizer:
    """A transformers tokenizer (any base vocabulary) with the SOLO tokens; SoloTokenizer's interface."""

    def __init__(self, hf, base_vocab: int, chat_tokens: bool = True, close_with_vision: bool = False):
        """Wrap ``hf``, adding the SOLO tokens at ids ``base_vocab``, ``base_vocab + 1``, ..."""
        self.hf = hf
        vocab = hf.get_vocab()
        # Chat tokens the base already has (e.g. SmolLM2's <|im_start|>) keep their ids.
        self.added_tokens = [t for t in solo_token_list(chat_tokens)
                             if t not in CHAT_TOKENS or vocab.get(t, base_vocab) >= base_vocab]
        self.chat_tokens, self.close_with_vision = chat_tokens, close_with_vision
        if VISION_TOKENS[0] not in vocab:
            filler = [f"<|solo_unused_{i}|>" for i in range(len(hf), base_vocab)]
            hf.add_special_tokens({"additional_special_tokens": filler + self.added_tokens})
        ids = hf.convert_tokens_to_ids(self.added_tokens)
        if ids != list(range(base_vocab, base_vocab + len(ids))):
            raise TokenizerMismatchError(f"SOLO tokens landed at ids {ids[:3]}..., expected {base_vocab}...")
        self.base_vocab = base_vocab
        self.token_to_id = dict(zip(self.added_tokens, ids))
        self.vision_id, self.vpatch_id, self.vrow_sep_id, self.vframe_sep_id, self.vision_end_id = ids[:5]
        self.image_close_id = self.vision_id if close_with_vision else self.vision_end_id
        self.bos_id = hf.bos_token_id if hf.bos_token_id is not None else hf.eos_token_id
        self.eos_id = hf.eos_token_id
        self.pad_id = hf.pad_token_id if hf.pad_token_id is not None else self.eos_id

    @property
    def vocab_size(self) -> int:
        """Base vocabulary plus the SOLO tokens."""
        return self.base_vocab + len(self.added_tokens)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Text -> ids (no special tokens added by the HF tokenizer)."""
        ids = self.hf.encode(text, add_special_tokens=False) if text else []
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids) -> str:
        """Ids -> text."""
        return self.hf.decode([int(i) for i in ids])

    def image_tokens(self, rows: int, cols: int) -> list[int]:
        """SOLO's image block for a rows x cols grid."""
        out = [self.vision_id]
        for r in range(rows):
            out += ([self.vrow_sep_id] if r else []) + [self.vpatch_id] * cols
        return out + [self.image_close_id]

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Write the HF tokenizer and the SOLO metadata."""
        directory = Path(directory)
        self.hf.save_pretrained(str(directory))
        (directory / META_FILE).write_text(json.dumps(
            {"chat_tokens": self.chat_tokens, "close_with_vision": self.close_with_vision,
             "vocab_size": self.vocab_size, "base_vocab": self.base_vocab}, indent=2))
        return str(directory)


def tokenizer_for_import(
    src_dir: Path, rows: int, tokenizer: str | None, chat_tokens: bool, close_with_vision: bool,
    solo_release: bool,
):
    """The tokenizer of an imported model: SoloTokenizer on a 32000-piece SentencePiece base, else HF + tokens.

    ``rows``: the source's embedding rows. A SOLO release must already hold the SOLO tokens.
    """
    cand = Path(tokenizer) if tokenizer else src_dir
    sp_file = cand if cand.is_file() else cand / "tokenizer.model"
    has_hf = cand.is_dir() and any((cand / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    base = rows
    if solo_release:
        if has_hf:
            base = check_solo_tokens(cand)
        elif not sp_file.is_file():
            raise ConversionError(f"{cand}: no tokenizer with the SOLO tokens found for this SOLO release")
        else:
            base = BASE_VOCAB
        chat_tokens = chat_tokens and rows >= base + len(solo_token_list(True))
    if sp_file.is_file() and base == BASE_VOCAB:
        return SoloTokenizer(sp_file, chat_tokens=chat_tokens, close_with_vision=close_with_vision)
    if has_hf:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(cand))
        return HFSoloTokenizer(hf, base, chat_tokens, close_with_vision)
    raise ConversionError(
        f"no tokenizer found in {cand} (need tokenizer.model for a 32000-piece base, or a HF tokenizer)"
    )


def check_solo_tokens(directory: str | os.PathLike, vpatch_id: int | None = None) -> int:
    """Id of ``<vision>`` (= the base vocabulary); TokenizerMismatchError naming the directory if SOLO tokens lack."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(directory))
    ids = hf.convert_tokens_to_ids(list(VISION_TOKENS))
    if any(i is None or i == hf.unk_token_id for i in ids):
        raise TokenizerMismatchError(
            f"{directory}: tokenizer lacks the SOLO tokens {list(VISION_TOKENS)} (got ids {ids}); "
            "import the base model with this tool to add them"
        )
    if ids != list(range(ids[0], ids[0] + 5)):
        raise TokenizerMismatchError(f"{directory}: SOLO tokens {list(VISION_TOKENS)} are not consecutive: {ids}")
    if vpatch_id is not None and ids[1] != vpatch_id:
        raise TokenizerMismatchError(f"{directory}: <vpatch> is id {ids[1]} but the model uses {vpatch_id}")
    return ids[0]


def load_tokenizer(directory: str | os.PathLike):
    """A tokenizer directory written by the importer/exporter -> SoloTokenizer or HFSoloTokenizer."""
    directory = Path(directory)
    meta_file = directory / META_FILE
    if not meta_file.is_file():
        raise TokenizerMismatchError(f"{meta_file}: missing; {directory} is not a SOLO tokenizer directory")
    meta = json.loads(meta_file.read_text())
    if "base_vocab" not in meta and (directory / "tokenizer.model").is_file():
        return SoloTokenizer.from_pretrained(directory)
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(directory))
    return HFSoloTokenizer(hf, int(meta["base_vocab"]), meta.get("chat_tokens", True),
                           meta.get("close_with_vision", False))
