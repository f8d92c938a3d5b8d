"""Scoring and greedy generation with an HF export (stock transformers ``FuyuForCausalLM`` + SoloProcessor).

The batches are the ones the Megatron backend gets (right-padded, positions from 0, the patches
reordered to Fuyu's (row, column, channel) flattening); target log-probs are a log-softmax over the
true vocabulary (the exported head has exactly ``vocab_size`` rows; it is sliced anyway). Generation
uses ``model.generate`` (greedy, KV cache) one prompt at a time, so no prompt is padded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from megatron_solo.evaluation.documents import Batch, Doc
from megatron_solo.evaluation.scoring import strip_eos
from megatron_solo.hf.generate import export_template, load_exported
from megatron_solo.hf.processor import SoloProcessor, fuyu_image_key, solo_to_fuyu_patches


class HFBackend:
    """An exported model in this process (one process: no data parallelism)."""

    data_parallel_rank = 0
    data_parallel_size = 1
    is_main = True

    def __init__(self, model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32,
                 max_side: int | None = None, device: str | torch.device | None = None):
        """Load the model (in ``dtype``, on ``device``: CUDA when present) and its processor."""
        from megatron_solo.evaluation.errors import EvaluationError

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise EvaluationError(f"--hf {model_dir}: not an exported model directory (no config.json)")
        self.model, processor = load_exported(model_dir, dtype)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        tok = processor.tokenizer
        self.processor = SoloProcessor(tok, processor.patch_size, max_side or processor.max_side)
        self.tokenizer = tok
        self.template = export_template(model_dir)
        text = self.model.config.text_config
        self.vocab_size = int(text.vocab_size)
        self.max_positions = int(text.max_position_embeddings)
        self.pad_id = tok.pad_id
        self.patch_size = processor.patch_size
        self.description = {"backend": "hf", "model": str(model_dir), "layout": "single process",
                            "dtype": str(dtype).replace("torch.", "")}

    def _pixel_values(self, patches: torch.Tensor | None) -> torch.Tensor | None:
        if patches is None:
            return None
        fuyu = solo_to_fuyu_patches(patches, self.patch_size)
        return fuyu[None].to(self.device, self.model.dtype)

    def _images(self, patches: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The patches under the keyword the installed FuyuForCausalLM takes (none without an image)."""
        return {} if patches is None else {fuyu_image_key(): self._pixel_values(patches)}

    def target_logprobs(self, batch: Batch) -> torch.Tensor:
        """log p(label) at the target positions (row-major), float32, over the true vocabulary."""
        with torch.no_grad():
            logits = self.model(input_ids=batch.tokens.to(self.device),
                                attention_mask=(batch.position_ids < batch.lengths[:, None]).long().to(self.device),
                                **self._images(batch.patches)).logits
        mask = batch.label_mask.to(self.device)
        picked = logits[mask][:, :self.vocab_size].float()
        logprobs = torch.log_softmax(picked, dim=-1)
        return logprobs.gather(-1, batch.labels.to(self.device)[mask][:, None])[:, 0].cpu()

    def greedy(self, docs: Sequence[Doc], max_new_tokens: int, eos_id: int) -> list[list[int]]:
        """Greedy continuation of each prompt (``model.generate``), without the closing eos."""
        out = []
        for doc in docs:
            ids = torch.from_numpy(doc.ids)[None].to(self.device)
            # generate() sends any image key, even None, to the patch projection
            images = self._images(doc.patches)
            with torch.no_grad():
                seq = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **images,
                                          max_new_tokens=max_new_tokens, do_sample=False,
                                          eos_token_id=eos_id, pad_token_id=self.pad_id)
            out.append(strip_eos(seq[0, ids.shape[1]:].tolist(), eos_id))
        return out

    def gather(self, local: dict[int, object]) -> dict[int, object]:
        """One process: the results as they are."""
        return local
