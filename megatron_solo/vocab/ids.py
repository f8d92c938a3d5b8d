"""SOLO's special tokens and the image block, as the SOLO-7B release defines them.

The tokens are appended to a base vocabulary of V pieces in the release's order, so on
Mistral's 32000 pieces::

    <vision>=32000 <vpatch>=32001 <vrow_sep>=32002 <vframe_sep>=32003 </vision>=32004
    <loc_1>..<loc_1024>=32005..33028, then (optional) <|im_start|>=33029 <|im_end|>=33030.

One image of rows x cols patches is the block ``<vision>``, the rows of ``<vpatch>``
separated by ``<vrow_sep>`` (between rows, not after the last), and ``</vision>``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from megatron_solo.errors import UserInputError

BASE_VOCAB = 32000  # Mistral's SentencePiece pieces
VISION_TOKENS = ("<vision>", "<vpatch>", "<vrow_sep>", "<vframe_sep>", "</vision>")
NUM_LOC = 1024
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")

VISION_START_ID = BASE_VOCAB
VPATCH_ID = BASE_VOCAB + 1
VROW_SEP_ID = BASE_VOCAB + 2
VFRAME_SEP_ID = BASE_VOCAB + 3
VISION_END_ID = BASE_VOCAB + 4
SOLO_VOCAB_SIZE = BASE_VOCAB + len(VISION_TOKENS) + NUM_LOC  # 33029, the release's Megatron vocabulary
SOLO_CHAT_VOCAB_SIZE = SOLO_VOCAB_SIZE + len(CHAT_TOKENS)
PAD_ID = 2  # Mistral has no pad piece: padding carries </s> and is never trained on


class TokenizerMismatchError(UserInputError):
    """The tokenizer and a model disagree on vocabulary size or special ids."""


def solo_token_list(chat_tokens: bool = True) -> list[str]:
    """The SOLO tokens in id order (vision tokens, <loc_*>, optionally the chat tokens)."""
    out = list(VISION_TOKENS) + [f"<loc_{i}>" for i in range(1, NUM_LOC + 1)]
    return out + (list(CHAT_TOKENS) if chat_tokens else [])


class VisionIds(NamedTuple):
    """The ids an image block is built from; stored in every shard index so loaders need no tokenizer."""

    vision: int = VISION_START_ID
    vpatch: int = VPATCH_ID
    vrow_sep: int = VROW_SEP_ID
    close: int = VISION_END_ID  # </vision>, or <vision> for the release's instruction-tuned quirk

    @classmethod
    def from_tokenizer(cls, tok) -> VisionIds:
        """The block ids ``tok`` uses."""
        return cls(tok.vision_id, tok.vpatch_id, tok.vrow_sep_id, tok.image_close_id)


SOLO_VISION_IDS = VisionIds()


def image_token_count(rows: int, cols: int) -> int:
    """Tokens of one image block: patches, separators between rows, open and close."""
    return rows * cols + rows - 1 + 2


def image_block(rows: int, cols: int, ids: VisionIds = SOLO_VISION_IDS) -> np.ndarray:
    """The int64 id block of one image of ``rows`` x ``cols`` patches."""
    if rows <= 0 or cols <= 0:
        raise ValueError(f"image grid must be positive, got {rows}x{cols}")
    block = np.full((rows, cols + 1), ids.vpatch, dtype=np.int64)
    block[:, -1] = ids.vrow_sep
    out = np.empty(image_token_count(rows, cols), dtype=np.int64)
    out[0] = ids.vision
    out[1:-1] = block.reshape(-1)[:-1]  # no separator after the last row
    out[-1] = ids.close
    return out
