"""Tokenizers with the SOLO tokens: Mistral's SentencePiece model, or any HF tokenizer plus the tokens.

Both give the same interface (:class:`Tokenizer`). The SOLO tokens sit right after the base
vocabulary, so a base of V pieces gets ``<vision>`` = V, ``<vpatch>`` = V + 1, ... (V = 32000
reproduces SOLO-7B's ids). ``encode`` never turns text into special ids: a caption containing
"<vision>" is plain text, so web data cannot forge image blocks.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from megatron_solo.vocab.ids import (
    BASE_VOCAB,
    CHAT_TOKENS,
    NUM_LOC,
    VISION_TOKENS,
    TokenizerMismatchError,
    VisionIds,
    image_block,
    image_token_count,
    solo_token_list,
)

META_FILE = "solo_tokenizer.json"


class Tokenizer(Protocol):
    """What data, model checks, HF conversion and evaluation need of a SOLO tokenizer."""

    bos_id: int
    eos_id: int
    pad_id: int
    vision_id: int
    vpatch_id: int
    image_close_id: int
    vocab_size: int

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def image_tokens(self, rows: int, cols: int) -> list[int]: ...
    def save_pretrained(self, directory: str | os.PathLike) -> str: ...


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


class _SoloTokens:
    """The SOLO ids of a tokenizer whose added tokens start at ``base_vocab``; shared by both tokenizers."""

    bos_id: int
    eos_id: int

    def _set_solo_ids(self, token_to_id: dict[str, int], close_with_vision: bool) -> None:
        self.token_to_id = token_to_id
        self.close_with_vision = close_with_vision
        ids = [token_to_id[t] for t in VISION_TOKENS]
        self.vision_id, self.vpatch_id, self.vrow_sep_id, self.vframe_sep_id, self.vision_end_id = ids
        self.loc_ids = [token_to_id[f"<loc_{i}>"] for i in range(1, NUM_LOC + 1)]
        self.im_start_id = token_to_id.get(CHAT_TOKENS[0])
        self.im_end_id = token_to_id.get(CHAT_TOKENS[1])
        # the id that closes an image block in this tokenizer's streams (the release's SFT model: <vision>)
        self.image_close_id = self.vision_id if close_with_vision else self.vision_end_id

    @property
    def vision_ids(self) -> VisionIds:
        """The ids this tokenizer builds image blocks from."""
        return VisionIds.from_tokenizer(self)

    @property
    def special_ids(self) -> dict[str, int]:
        """Name -> id of every added token, plus bos/eos."""
        return {"<s>": self.bos_id, "</s>": self.eos_id, **self.token_to_id}

    def image_tokens(self, rows: int, cols: int, close_with_vision: bool | None = None) -> list[int]:
        """Token block of one image: <vision>, rows of cols <vpatch> separated by <vrow_sep>, </vision>."""
        quirk = self.close_with_vision if close_with_vision is None else close_with_vision
        ids = self.vision_ids._replace(close=self.vision_id if quirk else self.vision_end_id)
        return image_block(rows, cols, ids).tolist()

    @staticmethod
    def image_token_count(rows: int, cols: int) -> int:
        """Length of `image_tokens(rows, cols)`: patches + row separators + open/close."""
        return image_token_count(rows, cols)

    def is_loss_free(self, token_id: int) -> bool:
        """Vision special ids never carry loss (the release dropped loss on every id >= 32000 of that block)."""
        return self.vision_id <= token_id <= self.vision_end_id

    def check_compatible(self, model_vocab_size: int, special_ids: dict[str, int] | None = None,
                         pad_multiple: int | None = None) -> None:
        """Raise TokenizerMismatchError unless a model with `model_vocab_size` rows can use this tokenizer."""
        need = self.vocab_size
        if model_vocab_size < need:
            raise TokenizerMismatchError(
                f"tokenizer has {need} ids ({need - len(self.token_to_id)} base pieces + {len(self.token_to_id)} "
                f"SOLO tokens) but the model's embedding has only {model_vocab_size} rows; ids "
                f"{model_vocab_size}..{need - 1} ({self.decode([model_vocab_size])}...) would index past it"
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

    def _write_meta(self, directory: Path, **extra) -> None:
        (directory / META_FILE).write_text(json.dumps(
            {"chat_tokens": self.chat_tokens, "close_with_vision": self.close_with_vision,
             "vocab_size": self.vocab_size, **extra}, indent=2))


def base_sentencepiece(model_file: str | os.PathLike) -> bytes | None:
    """None for a SentencePiece model of Mistral's 32000 pieces; for one with SOLO's tokens appended as pieces
    (the SOLO-7B release's tokenizer.model), the serialized model of its 32000 base pieces.

    The appended pieces must be exactly SOLO's tokens at their ids, optionally followed by the chat tokens;
    anything else is a TokenizerMismatchError naming the first piece at fault. Dropping them from the
    SentencePiece model keeps ``encode`` from ever producing their ids from text (the tokenizer adds them
    back as special tokens at the same ids).
    """
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(model_file).read_bytes())
    except Exception as err:  # protobuf's DecodeError: not a SentencePiece model
        raise TokenizerMismatchError(f"{model_file}: not a SentencePiece model ({err})") from err
    size = len(proto.pieces)
    if size == BASE_VOCAB:
        return None
    solo = solo_token_list(chat_tokens=True)
    allowed = (BASE_VOCAB + len(solo) - len(CHAT_TOKENS), BASE_VOCAB + len(solo))
    if size < BASE_VOCAB or size > allowed[1]:
        raise TokenizerMismatchError(
            f"{model_file}: SentencePiece model has {size} pieces; SOLO's special ids assume Mistral's {BASE_VOCAB} "
            f"(or {allowed[0]} / {allowed[1]} with SOLO's tokens / and the chat tokens appended)")
    for i, piece in enumerate(proto.pieces[BASE_VOCAB:]):
        if piece.piece != solo[i]:
            raise TokenizerMismatchError(
                f"{model_file}: piece {BASE_VOCAB + i} is {piece.piece!r} but SOLO's token at that id is {solo[i]!r}; "
                f"only SOLO's tokens, in order, may follow Mistral's {BASE_VOCAB} pieces")
    if size not in allowed:
        raise TokenizerMismatchError(f"{model_file}: SentencePiece model has {size} pieces: SOLO's tokens after "
                                     f"Mistral's {BASE_VOCAB} are incomplete (expected {allowed[0]} or {allowed[1]})")
    del proto.pieces[BASE_VOCAB:]
    proto.trainer_spec.vocab_size = BASE_VOCAB
    return proto.SerializeToString()


class SoloTokenizer(_SoloTokens):
    """Mistral's SentencePiece model + SOLO's special tokens; ids match the released SOLO-7B."""

    def __init__(self, model_file: str | os.PathLike | None = None, chat_tokens: bool = True,
                 close_with_vision: bool = False):
        """Load `model_file` (default: mistral-common's); `close_with_vision` reproduces the release's quirk.

        `model_file` holds Mistral's 32000 pieces, or those followed by SOLO's tokens as pieces (the SOLO-7B
        release's tokenizer.model): see :func:`base_sentencepiece`.
        """
        import sentencepiece as spm

        self.model_file = str(model_file or default_tokenizer_path())
        self._base_proto = base_sentencepiece(self.model_file)  # None: the file is the base already
        if self._base_proto is None:
            self.sp = spm.SentencePieceProcessor(model_file=self.model_file)
        else:
            self.sp = spm.SentencePieceProcessor(model_proto=self._base_proto)
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self.unk_id = self.sp.unk_id()
        # Mistral has no pad piece: padding positions carry eos and are masked out of the loss anyway.
        self.pad_id = self.eos_id
        self.chat_tokens = chat_tokens
        self.added_tokens: list[str] = solo_token_list(chat_tokens)
        self._set_solo_ids({tok: BASE_VOCAB + i for i, tok in enumerate(self.added_tokens)}, close_with_vision)

    @property
    def vocab_size(self) -> int:
        """Number of ids (base pieces + added tokens), before any padding to a tensor-parallel multiple."""
        return BASE_VOCAB + len(self.added_tokens)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Text -> base-vocabulary ids (SentencePiece adds its leading '▁' as usual)."""
        ids = self.sp.encode(text) if text else []
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """Batch `encode` (SentencePiece's C++ batch path)."""
        return [list(x) for x in self.sp.encode(list(texts))]

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

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Write a tokenizer that stock transformers loads (tokenizer.json + config) plus tokenizer.model."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self._base_proto is None:
            shutil.copyfile(self.model_file, directory / "tokenizer.model")
        else:  # the base pieces only: the SOLO tokens are added below, as for any base
            (directory / "tokenizer.model").write_bytes(self._base_proto)
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
        self._write_meta(directory)
        return str(directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> SoloTokenizer:
        """Load a directory written by `save_pretrained`."""
        directory = Path(directory)
        meta_path = directory / META_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        return cls(directory / "tokenizer.model", chat_tokens=meta.get("chat_tokens", True),
                   close_with_vision=meta.get("close_with_vision", False))


class HFSoloTokenizer(_SoloTokens):
    """A transformers tokenizer (any base vocabulary) with the SOLO tokens; SoloTokenizer's interface."""

    def __init__(self, hf, base_vocab: int, chat_tokens: bool = True, close_with_vision: bool = False):
        """Wrap ``hf``, adding the SOLO tokens at ids ``base_vocab``, ``base_vocab + 1``, ..."""
        self.hf = hf
        vocab = hf.get_vocab()
        # Chat tokens the base already has (e.g. SmolLM2's <|im_start|>) keep their ids.
        self.added_tokens = [t for t in solo_token_list(chat_tokens)
                             if t not in CHAT_TOKENS or vocab.get(t, base_vocab) >= base_vocab]
        self.chat_tokens = chat_tokens
        if VISION_TOKENS[0] not in vocab:
            filler = [f"<|solo_unused_{i}|>" for i in range(len(hf), base_vocab)]
            hf.add_special_tokens({"additional_special_tokens": filler + self.added_tokens})
        ids = hf.convert_tokens_to_ids(self.added_tokens)
        if ids != list(range(base_vocab, base_vocab + len(ids))):
            raise TokenizerMismatchError(f"SOLO tokens landed at ids {ids[:3]}..., expected {base_vocab}...")
        self.base_vocab = base_vocab
        self._set_solo_ids(dict(zip(self.added_tokens, ids)), close_with_vision)
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

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text."""
        return self.hf.decode([int(i) for i in ids])

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Write the HF tokenizer and the SOLO metadata."""
        directory = Path(directory)
        self.hf.save_pretrained(str(directory))
        self._write_meta(directory, base_vocab=self.base_vocab)
        return str(directory)


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


def load_tokenizer(directory: str | os.PathLike) -> SoloTokenizer | HFSoloTokenizer:
    """A tokenizer directory written by ``save_pretrained`` -> SoloTokenizer or HFSoloTokenizer."""
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


def tokenizer_for_vocab(model_file: str | os.PathLike | None, vocab_size: int) -> SoloTokenizer:
    """The SentencePiece SOLO tokenizer of a model with ``vocab_size`` ids (chat tokens when it has room)."""
    from megatron_solo.vocab.ids import SOLO_CHAT_VOCAB_SIZE

    return SoloTokenizer(model_file, chat_tokens=vocab_size >= SOLO_CHAT_VOCAB_SIZE)
