"""HF-style processor for exported SOLO models: images + prompt -> input_ids, attention_mask and the patches.

Token layouts (the training formats of megatron_solo.data.samples):
- plain:  ``<s> [image block]... prompt``
- chat:   ``[image block]... <s>[INST] prompt [/INST]`` (SOLO's instruction template)

The patches go under the keyword the installed ``FuyuForCausalLM.forward`` takes them by
(:func:`fuyu_image_key`: ``pixel_values`` from transformers 5.24, ``image_patches`` before; a key
the model does not take would be swallowed by its ``**kwargs`` and the image silently ignored), in
Fuyu's (row, col, channel) flattening, in token order: (B, N, 3*P*P) when every sample has N
patches, else (1, total, 3*P*P) (Fuyu scatters patches over all image-token positions of the batch
in order). Batches are left-padded.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

PROCESSOR_FILE = "solo_processor.json"


@functools.cache
def fuyu_image_key() -> str:
    """The keyword the installed transformers' ``FuyuForCausalLM.forward`` takes image patches by."""
    import transformers
    from transformers import FuyuForCausalLM

    params = inspect.signature(FuyuForCausalLM.forward).parameters
    for key in ("pixel_values", "image_patches"):  # 5.24 renamed image_patches (still accepted, deprecated)
        if key in params:
            return key
    raise RuntimeError(f"transformers {transformers.__version__}: FuyuForCausalLM.forward takes neither "
                       "pixel_values nor image_patches; this version is not supported")


def solo_to_fuyu_patches(patches: torch.Tensor, patch: int = 32, channels: int = 3) -> torch.Tensor:
    """(N, C*P*P) channel-major patches -> Fuyu's (row, col, channel) flattening."""
    n = patches.shape[0]
    return patches.reshape(n, channels, patch, patch).permute(0, 2, 3, 1).reshape(n, -1)


def fuyu_to_solo_patches(pixel_values: torch.Tensor, patch: int = 32, channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`solo_to_fuyu_patches`; any leading dims are flattened to (N, C*P*P)."""
    flat = pixel_values.reshape(-1, patch, patch, channels)
    return flat.permute(0, 3, 1, 2).reshape(flat.shape[0], -1)


class SoloProcessor:
    """Tokenizer + SOLO's image rule, called like a transformers processor."""

    def __init__(self, tokenizer, patch_size: int = 32, max_side: int = 1024):
        """``tokenizer``: SoloTokenizer or HFSoloTokenizer (megatron_solo.vocab)."""
        self.tokenizer, self.patch_size, self.max_side = tokenizer, patch_size, max_side

    def image(self, image) -> tuple[torch.Tensor, tuple[int, int]]:
        """One image (PIL, path or bytes) -> channel-major patches (N, 3*P*P) and grid (rows, cols)."""
        from megatron_solo.data.image import preprocess_image

        return preprocess_image(image, self.patch_size, self.max_side)

    def encode_one(self, prompt: str, images: Sequence, chat: bool) -> tuple[list[int], list[torch.Tensor]]:
        """Ids and channel-major patch tensors of one sample."""
        tok = self.tokenizer
        blocks, patches = [], []
        for img in images:
            p, (rows, cols) = self.image(img)
            blocks += tok.image_tokens(rows, cols)
            patches.append(p)
        if chat:
            ids = blocks + [tok.bos_id] + tok.encode(f"[INST] {prompt.strip()} [/INST]")
        else:
            ids = [tok.bos_id] + blocks + tok.encode(prompt)
        return ids, patches

    def __call__(self, text: str | Sequence[str], images=None, *, chat: bool = False,
                 return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        """Batch of prompts (one or a list) with images (None, one per sample, or a list per sample)."""
        if return_tensors != "pt":
            raise ValueError("only return_tensors='pt' is supported")
        texts = [text] if isinstance(text, str) else list(text)
        if images is None:
            per_sample = [[] for _ in texts]
        elif len(texts) == 1 and not (isinstance(images, list) and images and isinstance(images[0], list)):
            per_sample = [images if isinstance(images, list) else [images]]
        else:
            per_sample = [im if isinstance(im, list) else [im] for im in images]
        if len(per_sample) != len(texts):
            raise ValueError(f"{len(texts)} prompts but {len(per_sample)} image lists")
        encoded = [self.encode_one(t, im, chat) for t, im in zip(texts, per_sample)]
        width = max(len(ids) for ids, _ in encoded)
        pad = self.tokenizer.pad_id
        input_ids = torch.full((len(texts), width), pad, dtype=torch.long)
        mask = torch.zeros(len(texts), width, dtype=torch.long)
        for b, (ids, _) in enumerate(encoded):
            input_ids[b, width - len(ids):] = torch.tensor(ids)
            mask[b, width - len(ids):] = 1
        out = {"input_ids": input_ids, "attention_mask": mask}
        counts = [sum(p.shape[0] for p in ps) for _, ps in encoded]
        if sum(counts):
            fuyu = [solo_to_fuyu_patches(torch.cat(ps), self.patch_size) if ps else None for _, ps in encoded]
            key = fuyu_image_key()
            if len(set(counts)) == 1:
                out[key] = torch.stack(fuyu)
            else:
                out[key] = torch.cat([f for f in fuyu if f is not None])[None]
        return out

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Ids -> text, dropping <s>, </s>, padding and SOLO tokens when ``skip_special_tokens``."""
        tok = self.tokenizer
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            drop = {tok.bos_id, tok.eos_id, tok.pad_id}
            ids = [i for i in ids if i not in drop and i < tok.vision_id]
        return tok.decode(ids)

    def batch_decode(self, batch, skip_special_tokens: bool = True) -> list[str]:
        """:meth:`decode` for each row."""
        return [self.decode(row, skip_special_tokens) for row in batch]

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Write solo_processor.json (the tokenizer is saved separately, in the same directory)."""
        Path(directory, PROCESSOR_FILE).write_text(json.dumps(
            {"processor_class": "megatron_solo.hf.processor.SoloProcessor",
             "patch_size": self.patch_size, "max_side": self.max_side}, indent=2))
        return str(directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> SoloProcessor:
        """Load the processor and tokenizer of an exported model directory."""
        from megatron_solo.vocab import load_tokenizer

        meta_file = Path(directory, PROCESSOR_FILE)
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        return cls(load_tokenizer(directory), meta.get("patch_size", 32), meta.get("max_side", 1024))
