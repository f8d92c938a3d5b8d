"""Validation loss: the masked token loss over held-out packs, forward only, at any TP/PP/DP layout.

Every evaluation reads the same packs (the first ``eval_iters`` global batches of the eval data),
so the numbers of one run are comparable with each other. The loss is the training loss (text
positions only) summed over all micro-batches and data-parallel ranks and divided by the number
of loss tokens, so it does not depend on how a global batch is split.
"""

from __future__ import annotations

import torch

from megatron_solo.training.forward_step import solo_forward_step
from megatron_solo.training.step import global_mean_loss, loss_totals


class Validator:
    """Runs megatron-core's schedule with ``forward_only=True`` over the eval loader from pack 0."""

    def __init__(self, loader, iters: int, num_microbatches: int, seq_length: int, micro_batch_size: int) -> None:
        """``loader``: a PackedDataLoader of this DP rank over the eval data (its state is reset each time)."""
        self.loader, self.iters = loader, iters
        self.num_microbatches, self.seq_length, self.micro_batch_size = num_microbatches, seq_length, micro_batch_size

    def loss(self, chunks: list[torch.nn.Module]) -> float | None:
        """Mean validation loss per loss token (on the last pipeline stage; None elsewhere)."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        self.loader.consumed_packs = 0  # the same packs at every evaluation
        batches = iter(self.loader)
        forward = get_forward_backward_func()
        totals = None
        for chunk in chunks:
            chunk.eval()
        try:
            with torch.no_grad():
                for _ in range(self.iters):
                    micro = [next(batches) for _ in range(self.num_microbatches)]
                    iters = [iter(micro) for _ in chunks]
                    outputs = forward(
                        forward_step_func=solo_forward_step,
                        data_iterator=iters if len(chunks) > 1 else iters[0],
                        model=chunks if len(chunks) > 1 else chunks[0],
                        num_microbatches=self.num_microbatches,
                        seq_length=self.seq_length,
                        micro_batch_size=self.micro_batch_size,
                        forward_only=True,
                    )
                    part = loss_totals(outputs)
                    if part is not None:
                        totals = part if totals is None else totals + part
        finally:
            for chunk in chunks:
                chunk.train()
            batches.close()  # shuts the eval DataLoader's workers down now
        return global_mean_loss(totals)[0]
