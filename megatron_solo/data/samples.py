"""Sample kinds -> segments (text ids with a loss flag, or an image): the unit stored in a shard.

Token stream of each kind (one sample = one document; `[img]` is SOLO's image block):
- classification / caption:  <s> [img] caption </s>               loss on caption and </s>
- interleaved (MMC4):        <s> text [img] text [img] ... </s>   loss on all text and </s>
- plain text:                <s> text </s>                        loss on text and </s>
- conversation (SFT), SOLO's template:
      [img]... <s>[INST] q1 [/INST] a1</s>[INST] q2 [/INST] a2</s>   loss only on the answers and their </s>
The loss flag belongs to a token as a prediction *target*; the dataset turns it into a label-aligned mask.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from megatron_solo.vocab import SOLO_VISION_IDS, Tokenizer, VisionIds, image_block, image_token_count


class SkipSample(Exception):
    """A sample that is dropped and counted under `reason` in the preprocessing stats."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason


@dataclass
class TextSegment:
    """Token ids and whether they are trained on (as targets)."""

    ids: list[int]
    loss: bool = True


@dataclass
class ImageSegment:
    """An image already resized to the patch grid."""

    image: Image.Image
    patch: int = 32

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols)."""
        return self.image.height // self.patch, self.image.width // self.patch


Segment = TextSegment | ImageSegment


@dataclass
class Sample:
    """One document: its key, its kind and its segments in stream order."""

    key: str
    kind: str
    segments: list[Segment] = field(default_factory=list)

    def text_tokens(self) -> int:
        """Number of text tokens (including <s>/</s>)."""
        return sum(len(s.ids) for s in self.segments if isinstance(s, TextSegment))

    def image_tokens(self) -> int:
        """Number of tokens of all image blocks."""
        return sum(image_token_count(*s.grid) for s in self.segments if isinstance(s, ImageSegment))

    def __len__(self) -> int:
        return self.text_tokens() + self.image_tokens()


def _clean(text: str | None) -> str:
    return (text or "").strip()


# ----------------------------------------------------------------------------------------------------
# builders, one per kind


def image_text_sample(key: str, kind: str, images: Sequence[ImageSegment], caption: str,
                      tok: Tokenizer) -> Sample:
    """<s> [img]... caption </s> (classification and caption data)."""
    caption = _clean(caption)
    if not caption:
        raise SkipSample("empty_caption", key)
    return Sample(key, kind, [TextSegment([tok.bos_id], loss=False), *images,
                              TextSegment(tok.encode(caption) + [tok.eos_id], loss=True)])


def classification_sample(key: str, image: ImageSegment, label: str, tok: Tokenizer,
                          class_names: dict[str, str] | None = None, template: str = "{}") -> Sample:
    """Image + caption made from its class name through `template` (e.g. "a photo of a {}.")."""
    label = str(label)
    if class_names is not None:
        if label not in class_names:
            raise SkipSample("missing_class_name", f"{key}: label {label!r} not in the class-name map")
        name = class_names[label]
    else:
        name = label
    return image_text_sample(key, "classification", [image], template.format(_clean(name)) if _clean(name)
                             else "", tok)


def caption_sample(key: str, image: ImageSegment, caption: str, tok: Tokenizer) -> Sample:
    """Image-caption pair."""
    return image_text_sample(key, "caption", [image], caption, tok)


def text_sample(key: str, text: str, tok: Tokenizer) -> Sample:
    """Plain text document."""
    text = text or ""
    if not text.strip():
        raise SkipSample("empty_text", key)
    return Sample(key, "text", [TextSegment([tok.bos_id], loss=False),
                                TextSegment(tok.encode(text) + [tok.eos_id], loss=True)])


def interleaved_sample(key: str, items: Sequence[str | ImageSegment], tok: Tokenizer) -> Sample:
    """Interleaved document: `items` are texts and images in reading order."""
    segments: list[Segment] = [TextSegment([tok.bos_id], loss=False)]
    n_images = n_text = 0
    for item in items:
        if isinstance(item, ImageSegment):
            segments.append(item)
            n_images += 1
        elif _clean(item):
            # keep a separating space between text chunks: SentencePiece's dummy prefix supplies it
            segments.append(TextSegment(tok.encode(item.strip()), loss=True))
            n_text += 1
    if n_text == 0:
        raise SkipSample("empty_text", key)
    segments.append(TextSegment([tok.eos_id], loss=True))
    return Sample(key, "interleaved", segments)


_IMAGE_PLACEHOLDER = re.compile(r"\s*<image>\s*")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
          "system": "system"}


def normalize_turns(turns: Sequence[dict]) -> list[tuple[str, str]]:
    """LLaVA ({"from","value"}) or OpenAI ({"role","content"}) turns -> [(role, text)], placeholders removed."""
    out = []
    for turn in turns:
        role = _ROLES.get(str(turn.get("from", turn.get("role", ""))).lower())
        if role is None:
            raise SkipSample("bad_turn", f"unknown role in {turn!r}"[:200])
        text = turn.get("value", turn.get("content", "")) or ""
        if not isinstance(text, str):
            raise SkipSample("bad_turn", "turn content is not a string")
        out.append((role, _IMAGE_PLACEHOLDER.sub(" ", text).strip()))
    return out


def conversation_sample(key: str, images: Sequence[ImageSegment], turns: Sequence[dict],
                        tok: Tokenizer) -> Sample:
    """SOLO's SFT template: images first, then <s>[INST] q [/INST] a</s>...; loss on answers and their </s>."""
    pairs = normalize_turns(turns)
    system = " ".join(t for r, t in pairs if r == "system" and t)
    pairs = [(r, t) for r, t in pairs if r != "system"]
    if not any(r == "assistant" and t for r, t in pairs):
        raise SkipSample("no_assistant_turn", key)
    segments: list[Segment] = list(images)
    segments.append(TextSegment([tok.bos_id], loss=False))
    question: list[str] = [system] if system else []
    answered = 0
    for role, text in pairs:
        if role == "user":
            question.append(text)
            continue
        if not question or not text:
            continue  # an answer without a question (or an empty one) teaches nothing: skip the turn
        prompt = "[INST] " + "\n\n".join(q for q in question if q) + " [/INST]"
        segments.append(TextSegment(tok.encode(prompt), loss=False))
        segments.append(TextSegment(tok.encode(text) + [tok.eos_id], loss=True))
        question = []
        answered += 1
    if answered == 0:
        raise SkipSample("no_assistant_turn", key)
    return Sample(key, "conversation", segments)


# ----------------------------------------------------------------------------------------------------
# stored form <-> token stream


def segments_meta(sample: Sample, image_names: Sequence[str]) -> list[dict]:
    """JSON description of the segments (text: count and loss; image: file and grid), for the shard."""
    meta, k = [], 0
    for seg in sample.segments:
        if isinstance(seg, TextSegment):
            meta.append({"text": len(seg.ids), "loss": int(seg.loss)})
        else:
            rows, cols = seg.grid
            meta.append({"image": image_names[k], "rows": rows, "cols": cols})
            k += 1
    return meta


def layout(meta: Sequence[dict]) -> tuple[int, int, list[tuple[int, int]]]:
    """(text tokens, image tokens, image block intervals [start, end)) of stored segments."""
    pos = text = image = 0
    blocks = []
    for seg in meta:
        if "text" in seg:
            pos += seg["text"]
            text += seg["text"]
        else:
            n = image_token_count(seg["rows"], seg["cols"])
            blocks.append((pos, pos + n))
            pos += n
            image += n
    return text, image, blocks


def expand(meta: Sequence[dict], text_ids: np.ndarray, vision: VisionIds = SOLO_VISION_IDS
           ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, str, int, int]]]:
    """Stored segments -> (ids int64, target-loss flags bool, [(block start, end, image name, rows, cols)])."""
    text_len, image_len, _ = layout(meta)
    if len(text_ids) != text_len:
        raise ValueError(f"segments describe {text_len} text tokens but {len(text_ids)} are stored")
    ids = np.empty(text_len + image_len, dtype=np.int64)
    loss = np.zeros(text_len + image_len, dtype=bool)
    images = []
    pos = used = 0
    for seg in meta:
        if "text" in seg:
            n = seg["text"]
            ids[pos:pos + n] = text_ids[used:used + n]
            loss[pos:pos + n] = bool(seg["loss"])
            used += n
        else:
            block = image_block(seg["rows"], seg["cols"], vision)
            n = len(block)
            ids[pos:pos + n] = block
            images.append((pos, pos + n, seg["image"], seg["rows"], seg["cols"]))
        pos += n
    return ids, loss, images
