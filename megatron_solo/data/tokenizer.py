"""SOLO tokenizer: Mistral's SentencePiece model plus the SOLO special tokens at the release's ids.

Ids (base model of 32000 pieces):
    <vision>=32000 <vpatch>=32001 <vrow_sep>=32002 <vframe_sep>=32003 </vision>=32004
    <loc_1>..<loc_1024>=32005..33028, then (optional) <|im_start|>=33029 <|im_end|>=33030.

`encode` never turns text into special ids: a caption that happens to contain "<vision>" is tokenized as
plain text, so web data cannot forge image blocks. Special ids enter the stream only through
`image_tokens` and the sample builders.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

BASE_VOCAB = 32000
VISION_TOKENS = ("<vision>", "<vpatch>", "<vrow_sep>", "<vframe_sep>", "</vision>")
NUM_LOC = 1024
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")


def default_tokenizer_path() -> str:
    """Path of the Mistral SentencePiece model shipped by the `mistral-common` package (tests, quick start)."""
    try:
        import mistral_common
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise FileNotFoundError("install mistral-common or pass a tokenizer.model path") from err
    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the installed mistral-common")
    return str(path)


class TokenizerMismatchError(ValueError):
    """The tokenizer and a model disagree on vocabulary size or special ids."""


class SoloTokenizer:
    """SentencePiece base model + SOLO's special tokens; ids match the released SOLO-7B."""

    def __init__(self, model_file: str | os.PathLike | None = None, chat_tokens: bool = True,
                 close_with_vision: bool = False):
        """Load `model_file` (default: mistral-common's); `close_with_vision` reproduces the release's quirk."""
        self.model_file = str(model_file or default_tokenizer_path())
        self.sp = spm.SentencePieceProcessor(model_file=self.model_file)
        if self.sp.get_piece_size() != BASE_VOCAB:
            raise TokenizerMismatchError(
                f"{self.model_file}: SentencePiece model has {self.sp.get_piece_size()} pieces; SOLO's special "
                f"ids assume Mistral's {BASE_VOCAB}"
            )
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self.unk_id = self.sp.unk_id()
        # Mistral has no pad piece; padding positions carry eos and are masked out of the loss anyway.
        self.pad_id = self.eos_id
        self.chat_tokens = chat_tokens
        self.close_with_vision = close_with_vision
        self.added_tokens: list[str] = list(VISION_TOKENS) + [f"<loc_{i}>" for i in range(1, NUM_LOC + 1)]
        if chat_tokens:
            self.added_tokens += list(CHAT_TOKENS)
        self.token_to_id = {tok: BASE_VOCAB + i for i, tok in enumerate(self.added_tokens)}
        self.vision_id = self.token_to_id["<vision>"]
        self.vpatch_id = self.token_to_id["<vpatch>"]
        self.vrow_sep_id = self.token_to_id["<vrow_sep>"]
        self.vframe_sep_id = self.token_to_id["<vframe_sep>"]
        self.vision_end_id = self.token_to_id["</vision>"]
        self.loc_ids = [self.token_to_id[f"<loc_{i}>"] for i in range(1, NUM_LOC + 1)]
        self.im_start_id = self.token_to_id.get("<|im_start|>")
        self.im_end_id = self.token_to_id.get("<|im_end|>")
        # the id that closes an image block in this tokenizer's streams (the release's SFT model: <vision>)
        self.image_close_id = self.vision_id if close_with_vision else self.vision_end_id

    @property
    def vocab_size(self) -> int:
        """Number of ids (base pieces + added tokens), before any padding to a tensor-parallel multiple."""
        return BASE_VOCAB + len(self.added_tokens)

    @property
    def special_ids(self) -> dict[str, int]:
        """Name -> id of every token that is not a SentencePiece piece, plus bos/eos."""
        ids = {"<s>": self.bos_id, "</s>": self.eos_id}
        ids.update(self.token_to_id)
        return ids

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Text -> base-vocabulary ids (SentencePiece adds its leading '▁' as usual)."""
        ids = self.sp.encode(text) if text else []
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; <s>, </s> and added tokens are rendered by name, other runs decoded by SentencePiece."""
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            if i < BASE_VOCAB and not self.sp.is_control(i):
                run.append(i)
                continue
            if run:
                out.append(self.sp.decode(run))
                run = []
            if i < BASE_VOCAB:  # <s>, </s>: SentencePiece would render control pieces as nothing
                out.append(self.sp.id_to_piece(i))
                continue
            idx = i - BASE_VOCAB
            out.append(self.added_tokens[idx] if idx < len(self.added_tokens) else f"<unused_{i}>")
        if run:
            out.append(self.sp.decode(run))
        return "".join(out)

    def image_tokens(self, rows: int, cols: int, close_with_vision: bool | None = None) -> list[int]:
        """Token block of one image: <vision>, rows of cols <vpatch> separated by <vrow_sep>, </vision>."""
        if rows <= 0 or cols <= 0:
            raise ValueError(f"image grid must be positive, got {rows}x{cols}")
        quirk = self.close_with_vision if close_with_vision is None else close_with_vision
        row = [self.vpatch_id] * cols
        out = [self.vision_id]
        for r in range(rows):
            if r:
                out.append(self.vrow_sep_id)
            out.extend(row)
        out.append(self.vision_id if quirk else self.vision_end_id)
        return out

    @staticmethod
    def image_token_count(rows: int, cols: int) -> int:
        """Length of `image_tokens(rows, cols)`: patches + row separators + open/close."""
        return rows * cols + (rows - 1) + 2

    def is_loss_free(self, token_id: int) -> bool:
        """Vision special ids never carry loss (the release dropped loss on every id >= 32000 of that block)."""
        return BASE_VOCAB <= token_id <= self.vision_end_id

    def check_compatible(self, model_vocab_size: int, special_ids: dict[str, int] | None = None,
                         pad_multiple: int | None = None) -> None:
        """Raise TokenizerMismatchError unless a model with `model_vocab_size` rows can use this tokenizer."""
        need = self.vocab_size
        if model_vocab_size < need:
            raise TokenizerMismatchError(
                f"tokenizer has {need} ids (32000 Mistral pieces + {len(self.added_tokens)} SOLO tokens) but the "
                f"model's embedding has only {model_vocab_size} rows; ids {model_vocab_size}..{need - 1} "
                f"({self.decode([model_vocab_size])}...) would index past it"
            )
        if pad_multiple:
            padded = -(-need // pad_multiple) * pad_multiple
            if model_vocab_size != padded:
                raise TokenizerMismatchError(
                    f"model vocabulary {model_vocab_size} is not the tokenizer's {need} padded to a multiple of "
                    f"{pad_multiple} (expected {padded})"
                )
        for name, model_id in (special_ids or {}).items():
            ours = self.special_ids.get(name)
            if ours is None:
                raise TokenizerMismatchError(f"model expects special token {name!r} that this tokenizer lacks")
            if ours != model_id:
                raise TokenizerMismatchError(
                    f"special token {name!r} is id {ours} in the tokenizer but {model_id} in the model config"
                )

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Write a tokenizer that stock transformers loads (tokenizer.json + config) plus tokenizer.model."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.model_file, directory / "tokenizer.model")
        base_cfg = {
            "tokenizer_class": "LlamaTokenizer",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "add_bos_token": True,
            "add_eos_token": False,
            "legacy": False,
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(base_cfg, indent=2))
        from transformers import AutoTokenizer  # lazy: transformers is heavy and only needed here

        hf = AutoTokenizer.from_pretrained(str(directory))  # converts tokenizer.model to a fast tokenizer
        hf.add_special_tokens({"additional_special_tokens": list(self.added_tokens)})
        got = hf.convert_tokens_to_ids(self.added_tokens)
        want = [self.token_to_id[t] for t in self.added_tokens]
        if got != want:  # pragma: no cover - guards a transformers behaviour change
            raise TokenizerMismatchError("transformers assigned different ids to the SOLO tokens")
        hf.save_pretrained(str(directory))
        (directory / "solo_tokenizer.json").write_text(json.dumps(
            {"chat_tokens": self.chat_tokens, "close_with_vision": self.close_with_vision,
             "vocab_size": self.vocab_size}, indent=2))
        return str(directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> SoloTokenizer:
        """Load a directory written by `save_pretrained`."""
        directory = Path(directory)
        meta_path = directory / "solo_tokenizer.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        return cls(directory / "tokenizer.model", chat_tokens=meta.get("chat_tokens", True),
                   close_with_vision=meta.get("close_with_vision", False))

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """Batch `encode` (SentencePiece's C++ batch path)."""
        return [list(x) for x in self.sp.encode(list(texts))]
