"""Scoring and greedy generation with a Megatron checkpoint at any TP x PP x DP layout (megatron-core).

Forward passes go through megatron-core's ``get_forward_backward_func(forward_only=True,
collect_non_loss_data=True)``: the last pipeline stage turns its logits into the per-batch result
(log-probs of the targets, or the next greedy token), which is broadcast over the pipeline group where
later steps need it. Logits stay split over the vocabulary under tensor parallelism: target log-probs
come from megatron-core's vocab-parallel cross entropy, after the rows that only pad the vocabulary
(to a multiple of 128 x TP) are masked out, so the softmax runs over the model's true vocabulary just
as the exported HF model's does.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch

from megatron_solo.checkpoint.layout import resolve_checkpoint
from megatron_solo.checkpoint.metadata import TOKENIZER_DIR, model_config, read_metadata
from megatron_solo.checkpoint.model_io import load_solo_model
from megatron_solo.config.job import recorded_template
from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.evaluation.documents import Batch, Doc, collate
from megatron_solo.evaluation.errors import EvaluationError
from megatron_solo.hf.importer import check_layout
from megatron_solo.hf.processor import SoloProcessor
from megatron_solo.platform import current_device, init_distributed, init_parallel
from megatron_solo.vocab import load_tokenizer


def _masked_vocab_logits(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """float32 logits of this rank's vocabulary slice with the padding columns at -inf.

    ``logits`` must be a fresh tensor (an indexed copy): the cross entropy works on it in place.
    """
    from megatron.core import parallel_state as ps

    width = logits.shape[-1]
    start = ps.get_tensor_model_parallel_rank() * width
    logits = logits.float()
    if start + width <= vocab_size:
        return logits
    column = torch.arange(start, start + width, device=logits.device)
    return logits.masked_fill(column >= vocab_size, float("-inf"))


def _target_logprobs(vocab_size: int, batch: dict, output: torch.Tensor, non_loss_data: bool = True):
    """Last stage: log p(label) at the target positions, [N] float32 (vocab-parallel, no logits gathered)."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    mask = batch["label_mask"]
    if not mask.any():  # the same on every TP rank: no collective is skipped by one rank alone
        return output.new_zeros(0, dtype=torch.float32)
    picked = _masked_vocab_logits(output[mask], vocab_size)  # [N, V/tp]
    return -vocab_parallel_cross_entropy(picked, batch["labels"][mask])


def _next_tokens(vocab_size: int, batch: dict, output: torch.Tensor, non_loss_data: bool = True):
    """Last stage: the greedy next token after each row's last real token, [B] int64."""
    from megatron.core import parallel_state as ps

    rows = torch.arange(output.shape[0], device=output.device)
    last = _masked_vocab_logits(output[rows, batch["lengths"] - 1], vocab_size)  # [B, V/tp]
    size = ps.get_tensor_model_parallel_world_size()
    if size > 1:
        parts = [torch.empty_like(last) for _ in range(size)]
        torch.distributed.all_gather(parts, last.contiguous(), group=ps.get_tensor_model_parallel_group())
        last = torch.cat(parts, dim=-1)
    return last.argmax(dim=-1)


def _forward_step(post, data_iterator, model):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], None, patches=batch["patches"],
                   num_patches=batch["num_patches"])
    return output, functools.partial(post, batch)


class MegatronBackend:
    """A checkpoint loaded at ``parallel`` inside this process's (torchrun or one-process) world."""

    def __init__(self, checkpoint: str | os.PathLike, parallel: ParallelConfig | None = None,
                 dtype: torch.dtype = torch.float32, max_side: int | None = None, seed: int = 1234):
        """Join the world, build the model-parallel groups and load the weights (kept in ``dtype``)."""
        from megatron.core import parallel_state as ps

        self.parallel = parallel or ParallelConfig()
        if self.parallel.vpp:
            raise ValueError("evaluation runs without virtual pipeline stages; load with pipeline_parallel only")
        root, self.checkpoint = resolve_checkpoint(checkpoint)  # a wrong path fails before the world starts
        meta, meta_path = read_metadata(root)
        self.template = recorded_template(meta)
        cfg = model_config(meta)
        check_layout(cfg, self.parallel, meta_path)
        if cfg.num_layers % self.parallel.pipeline_parallel:
            raise EvaluationError(f"{meta_path}: {cfg.num_layers} layers cannot be split over "
                                  f"{self.parallel.pipeline_parallel} pipeline stages")
        init_distributed()
        try:
            self.parallel.data_parallel(torch.distributed.get_world_size())
        except ValueError as err:
            raise EvaluationError(f"--tensor-parallel / --pipeline-parallel: {err}") from err
        self.data_parallel_size = init_parallel(self.parallel, seed=seed)
        self.data_parallel_rank = ps.get_data_parallel_rank()
        self.chunks, self.cfg = load_solo_model(checkpoint, self.parallel)
        for chunk in self.chunks:
            chunk.eval()
            if dtype != torch.float32:
                for p in chunk.parameters():
                    p.data = p.data.to(dtype)
                chunk.config.params_dtype = chunk.config.pipeline_dtype = dtype
                chunk.config.bf16, chunk.config.fp16 = dtype == torch.bfloat16, dtype == torch.float16
        self.tokenizer = load_tokenizer(root / TOKENIZER_DIR)
        self.processor = SoloProcessor(self.tokenizer, self.cfg.patch_size, max_side or 1024)
        self.pad_id = self.tokenizer.pad_id
        self.max_positions = self.cfg.max_position_embeddings
        self.vocab_size = self.cfg.vocab_size
        self.is_main = torch.distributed.get_rank() == 0
        self.is_output = ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0
        world = torch.distributed.get_world_size()
        self.description = {"backend": "megatron", "checkpoint": str(self.checkpoint),
                            "layout": self.parallel.describe(world), "dtype": str(dtype).replace("torch.", "")}

    def _run(self, batch: Batch, post):
        """One forward pass of ``batch`` through the pipeline; ``post``'s result on the last stage, else None."""
        from megatron.core import parallel_state as ps
        from megatron.core.pipeline_parallel import get_forward_backward_func

        device = current_device()
        data = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.as_dict().items()}
        with torch.no_grad():
            out = get_forward_backward_func()(
                forward_step_func=functools.partial(_forward_step, post),
                data_iterator=iter([data]), model=self.chunks[0], num_microbatches=1,
                seq_length=batch.tokens.shape[1], micro_batch_size=batch.size,
                forward_only=True, collect_non_loss_data=True,
            )
        return out[0] if ps.is_pipeline_last_stage() else None

    def target_logprobs(self, batch: Batch) -> torch.Tensor | None:
        """log p(label) at the target positions on the reporting rank (last stage, TP rank 0), else None."""
        result = self._run(batch, functools.partial(_target_logprobs, self.vocab_size))
        return result.cpu() if self.is_output else None

    def greedy(self, docs: Sequence[Doc], max_new_tokens: int, eos_id: int) -> list[list[int]] | None:
        """Greedy continuations, recomputing the whole sequence each step (no KV cache)."""
        from megatron.core import parallel_state as ps

        docs = list(docs)
        new: list[list[int]] = [[] for _ in docs]
        done = [False] * len(docs)
        post = functools.partial(_next_tokens, self.vocab_size)
        for _ in range(max_new_tokens):
            tokens = self._run(collate(docs, self.pad_id), post)
            if ps.get_pipeline_model_parallel_world_size() > 1:
                if tokens is None:
                    tokens = torch.empty(len(docs), dtype=torch.long, device=current_device())
                torch.distributed.broadcast(tokens, src=ps.get_pipeline_model_parallel_last_rank(),
                                            group=ps.get_pipeline_model_parallel_group())
            for b, token in enumerate(tokens.tolist()):
                if done[b]:
                    continue
                if token == eos_id:
                    done[b] = True
                    continue
                new[b].append(token)
                d = docs[b]
                docs[b] = Doc(list(d.ids) + [token], list(d.target) + [False], d.patches)
            if all(done):
                break
        return new if self.is_output else None

    def gather(self, local: dict[int, object]) -> dict[int, object]:
        """Union of the reporting ranks' results, on every rank."""
        parts: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, local if self.is_output else {})
        merged: dict[int, object] = {}
        for part in parts:
            merged.update(part)
        return merged
