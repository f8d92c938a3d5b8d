"""The local spec's RMSNorm: torch's, with its weight marked for sequence parallelism as TE's norms mark theirs.

megatron-core's local norm (``WrappedTorchNorm``) refuses sequence parallelism. Under it each tensor-parallel
rank normalizes its own slice of the tokens, so the norm weight's gradient on one rank covers only that
slice; megatron-core's ``finalize_model_grads`` sums over the tensor-parallel group the gradients of the
parameters whose ``sequence_parallel`` attribute is set (TE's norms set it from the config). This norm sets
it the same way, and is otherwise ``torch.nn.RMSNorm`` as ``WrappedTorchNorm`` builds it: the same
computation, the same ``weight`` name, made in the default dtype (float32) whatever ``params_dtype`` says.
"""

from __future__ import annotations

import torch


class LocalRMSNorm(torch.nn.RMSNorm):
    """``torch.nn.RMSNorm`` built from megatron-core's config, its weight marked for the sequence-parallel sum."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **_: object) -> None:
        if config.normalization != "RMSNorm":
            raise ValueError(f"LocalRMSNorm is an RMSNorm; the config asks for {config.normalization}")
        if config.layernorm_zero_centered_gamma:
            raise ValueError("LocalRMSNorm has no zero-centered gamma")
        super().__init__(hidden_size, eps=eps)
        self.weight.sequence_parallel = config.sequence_parallel
