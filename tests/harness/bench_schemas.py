"""Tiny benchmark files written in each harness's own schema, and a scripted model that answers them.

The tests write their rows with the harnesses' column names in plain sight; this module only turns a
photo name into what the schema stores:
- VLMEvalKit's TSVs (``vlmeval/dataset/image_mcq.py``, ``image_yorn.py``, ``image_vqa.py``): the image as
  base64 (:func:`b64`), or the ``index`` of the row that holds it; options in columns ``A``..; the answer
  the option's letter;
- lmms-eval's Hugging Face datasets saved as parquet (the columns its ``tasks/*/utils.py`` read): an image
  as the ``{"bytes", "path"}`` struct ``datasets`` stores (:func:`struct`).

:class:`ScriptedModel` is a Backend whose answer to a prompt is a rule of the decoded prompt text, so a
test states each answer beside the question it is given to and works the score out by hand.
"""

from __future__ import annotations

import base64
import json
from functools import cache
from pathlib import Path

import torch

from tests.harness.eval_benchmarks import png


@cache
def image_bytes(name: str) -> bytes:
    """A skimage photo as a small PNG (32 pixels on its long side: one or two SOLO patches)."""
    return png(name, 32)


def b64(name: str) -> str:
    """VLMEvalKit's TSV image cell: the PNG as base64."""
    return base64.b64encode(image_bytes(name)).decode()


def struct(name: str) -> dict:
    """lmms-eval's parquet image cell: the struct a ``datasets`` Image feature stores."""
    return {"bytes": image_bytes(name), "path": f"{name}.png"}


def write_parquet(path: Path, rows: list[dict]) -> Path:
    """Rows as one parquet file, as ``datasets`` writes a split: an image struct column is recorded as an Image
    feature in the schema's metadata (so ``datasets``, and lmms-eval, hand the task a PIL image)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    images = {f.name: {"_type": "Image"} for f in table.schema
              if pa.types.is_struct(f.type) and {t.name for t in f.type} == {"bytes", "path"}}
    meta = {b"huggingface": json.dumps({"info": {"features": images}}).encode()}
    pq.write_table(table.replace_schema_metadata(meta), path)
    return path


def answering(replies: dict[str, str]):
    """A rule answering a prompt with the reply of the first key found in it (every prompt must match one)."""

    def rule(prompt: str) -> str:
        for key, reply in replies.items():
            if key in prompt:
                return reply
        raise AssertionError(f"no scripted reply for the prompt {prompt!r}")

    return rule


class ScriptedModel:
    """A Backend whose answer to a prompt is ``rule(prompt text)``: generated as is; a continuation that begins
    that answer scores 0, any other -1 a token."""

    data_parallel_rank, data_parallel_size, is_main = 0, 1, True
    template, max_positions = "plain", 4096

    def __init__(self, rule):
        from megatron_solo.hf.processor import SoloProcessor
        from megatron_solo.vocab import SoloTokenizer, default_tokenizer_path

        self.rule = rule
        self.tokenizer = SoloTokenizer(default_tokenizer_path())
        self.processor = SoloProcessor(self.tokenizer, 32, 64)
        self.pad_id = self.tokenizer.pad_id

    def _text(self, ids) -> str:
        return self.processor.decode([int(i) for i in ids])

    def greedy(self, docs, max_new_tokens, eos_id):
        """The rule's answer to each prompt, as token ids."""
        return [self.tokenizer.encode(self.rule(self._text(d.ids)))[:max_new_tokens] for d in docs]

    def target_logprobs(self, batch):
        """0 a token for a continuation the rule's answer begins with, -1 for any other."""
        out = []
        for b in range(batch.size):
            mask = batch.label_mask[b]
            first = int(mask.nonzero()[0, 0]) + 1  # label i is token i + 1
            prompt, cont = batch.tokens[b, :first], batch.labels[b][mask]
            right = self.rule(self._text(prompt)).strip().startswith(self._text(cont[:-1]).strip())
            out.append(torch.full((int(mask.sum()),), 0.0 if right else -1.0))
        return torch.cat(out)

    def gather(self, local):
        """One process: the local results are all of them."""
        return local
