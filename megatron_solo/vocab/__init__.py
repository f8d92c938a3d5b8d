"""The SOLO vocabulary, owned here alone: special-token ids, the image block, tokenizers.

Everything that builds or reads SOLO token streams (data, model, training, HF conversion,
evaluation) takes ids and image blocks from this package.
"""

from megatron_solo.vocab.ids import (
    BASE_VOCAB,
    CHAT_TOKENS,
    NUM_LOC,
    PAD_ID,
    SOLO_CHAT_VOCAB_SIZE,
    SOLO_VISION_IDS,
    SOLO_VOCAB_SIZE,
    VISION_END_ID,
    VISION_START_ID,
    VISION_TOKENS,
    VPATCH_ID,
    VROW_SEP_ID,
    TokenizerMismatchError,
    VisionIds,
    image_block,
    image_token_count,
    solo_token_list,
)
from megatron_solo.vocab.tokenizers import (
    HFSoloTokenizer,
    SoloTokenizer,
    Tokenizer,
    check_solo_tokens,
    default_tokenizer_path,
    load_tokenizer,
)

__all__ = [
    "BASE_VOCAB", "CHAT_TOKENS", "NUM_LOC", "PAD_ID", "SOLO_CHAT_VOCAB_SIZE", "SOLO_VISION_IDS", "SOLO_VOCAB_SIZE",
    "VISION_END_ID", "VISION_START_ID", "VISION_TOKENS", "VPATCH_ID", "VROW_SEP_ID", "HFSoloTokenizer",
    "SoloTokenizer", "Tokenizer", "TokenizerMismatchError", "VisionIds", "check_solo_tokens",
    "default_tokenizer_path", "image_block", "image_token_count", "load_tokenizer", "solo_token_list",
]
