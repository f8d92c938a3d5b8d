"""The local spec's packed-document attention on the GPU paths against the CPU masked reference.

FlexAttention and (where torch has it) flash varlen, in bf16, forward and backward, against the
boolean block-diagonal mask through SDPA on the CPU in fp32, over 2 x 4096 tokens cut into
documents at 12 random places (and between the rows), 32 heads in 8 KV groups, with and without
a sliding window. On the smoke run the
masked path itself runs in bf16 against its fp32 self, with tiny shapes.
"""

from __future__ import annotations

import pytest
import torch

from tests.gpu.checks import smoke

pytestmark = pytest.mark.gpu

ATTENTION_TOL = 3e-2  # relative, output and gradients: bf16 against fp32
SEQ, BATCH, HEADS, GROUPS, DIM = (256, 2, 4, 2, 32) if smoke() else (4096, 2, 32, 8, 128)
WINDOW = 32 if smoke() else 512
BACKENDS = ("sdpa_mask",) if smoke() else ("flex", "varlen")


def _inputs() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Document bounds over the flattened batch, and q, k, v and the output gradient."""
    g = torch.Generator().manual_seed(0)
    cuts = sorted(torch.randint(1, SEQ * BATCH, (12,), generator=g).tolist())
    cu = torch.tensor(sorted({0, *cuts, SEQ, SEQ * BATCH}), dtype=torch.int32)
    shapes = [(SEQ, BATCH, HEADS, DIM), (SEQ, BATCH, GROUPS, DIM), (SEQ, BATCH, GROUPS, DIM), (SEQ, BATCH, HEADS * DIM)]
    return cu, [torch.randn(*s, generator=g) for s in shapes]


def _attend(backend: str, device: torch.device, dtype: torch.dtype, window: int | None):
    """(output, [dq, dk, dv]) of one forward and backward of ``backend`` on ``device`` in ``dtype``."""
    from megatron.core.packed_seq_params import PackedSeqParams

    from megatron_solo.model.packed_attention import PackedDocumentAttention

    class Cfg:
        context_parallel_size = 1
        attention_dropout = 0.0
        kv_channels = DIM

    cu, (q, k, v, grad) = _inputs()
    longest = int((cu[1:] - cu[:-1]).max())
    params = PackedSeqParams(qkv_format="sbhd", cu_seqlens_q=cu.to(device), cu_seqlens_kv=cu.to(device),
                             max_seqlen_q=longest, max_seqlen_kv=longest)
    module = PackedDocumentAttention(Cfg, 1, None, "self", backend=backend, window=window)
    ins = [t.to(device, dtype).requires_grad_() for t in (q, k, v)]
    out = module(*ins, None, packed_seq_params=params)
    out.backward(grad.to(device, dtype))
    return out.float().cpu(), [t.grad.float().cpu() for t in ins]


@pytest.mark.parametrize("windowed", [False, True], ids=["no_window", "window"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_attention_matches_the_masked_reference(figures, backend: str, windowed: bool):
    from megatron_solo.model.packed_attention import varlen_supported
    from megatron_solo.platform import current_device

    if backend == "varlen" and not varlen_supported():
        pytest.skip(f"torch {torch.__version__} has no flash varlen attention with GQA and a window here")
    window = WINDOW if windowed else None
    ref_out, ref_grads = _attend("sdpa_mask", torch.device("cpu"), torch.float32, window)
    out, grads = _attend(backend, current_device(), torch.bfloat16, window)
    out_err = float((out - ref_out).abs().max() / ref_out.abs().max())
    grad_err = max(float((a - b).norm() / b.norm()) for a, b in zip(grads, ref_grads))
    figures.goal(f"< {ATTENTION_TOL:.0%}")
    figures.record(backend=backend, window=window, tokens=SEQ * BATCH, max_rel_out_err=out_err, rel_grad_err=grad_err)
    assert out_err < ATTENTION_TOL, f"{backend} output off the reference by {out_err:.2%}"
    assert grad_err < ATTENTION_TOL, f"{backend} gradients off the reference by {grad_err:.2%}"
