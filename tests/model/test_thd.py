"""The packed thd layout (Transformer Engine's): shaping, rotary positions, and the whole model on the CPU.

megatron-core's thd path (flat [B*S, 1, H] hidden states, RoPE restarted per document from
cu_seqlens) is exercised with the local spec, whose attention takes thd too, and compared with
the sbhd path that the transformers reference already checks (tests/model/test_solo_model.py).
"""

from __future__ import annotations

import pytest
import torch

from megatron_solo.config import ParallelConfig
from megatron_solo.config.model import RopeScaling
from megatron_solo.data.dataset import collate_packs
from megatron_solo.model import thd as T
from megatron_solo.model.builder import build_solo_model
from megatron_solo.platform import current_device, init_parallel
from megatron_solo.training.forward_step import packed_seq_params, to_device
from tests.harness import solo_batches as SB


def _micro_batch(seed: int, batch: int = 2, seq: int = 40) -> dict:
    """``batch`` packs of several documents (images included), collated as the loader does."""
    g = torch.Generator().manual_seed(seed)
    packs = []
    for _ in range(batch):
        p = SB.pack(g, seq)
        packs.append({k: (v[0] if k in ("tokens", "labels", "loss_mask", "position_ids") else v) for k, v in p.items()})
    return collate_packs(packs)


def test_to_thd_orders_tokens_batch_major_and_inverts():
    seq, batch, hidden = 5, 3, 4
    x = torch.randn(seq, batch, hidden)
    flat = T.to_thd(x)
    assert flat.shape == (batch * seq, 1, hidden)
    for b in range(batch):
        for s in range(seq):
            assert torch.equal(flat[b * seq + s, 0], x[s, b])
    assert torch.equal(T.from_thd(flat, batch), x)
    tokens = torch.arange(batch * seq).view(batch, seq)
    assert torch.equal(T.flatten_tokens(tokens)[0], torch.arange(batch * seq))
    assert torch.equal(T.unflatten_tokens(T.flatten_tokens(tokens), batch), tokens)
    logits = torch.randn(1, batch * seq, 7)
    assert torch.equal(T.unflatten_tokens(logits, batch)[1, 2], logits[0, seq + 2])
    sent = T.pipeline_view(flat, batch)
    assert sent.shape == (seq, batch, hidden) and sent.data_ptr() == flat.data_ptr()
    assert torch.equal(T.from_pipeline_view(sent), flat)


def test_document_positions_are_the_collated_position_ids():
    b = _micro_batch(0, batch=3)
    batch, seq = b["tokens"].shape
    assert torch.equal(T.document_positions(b["cu_seqlens"], batch * seq).view(batch, seq), b["position_ids"])
    T.check_positions(b["position_ids"], b["cu_seqlens"])
    cu = torch.tensor([0, 3, 3, 7], dtype=torch.int32)  # an empty document changes nothing
    assert T.document_positions(cu, 7).tolist() == [0, 1, 2, 0, 1, 2, 3]


def test_check_positions_names_a_position_thd_would_rotate_differently():
    b = _micro_batch(1)
    wrong = b["position_ids"].clone()
    wrong[1, 7] += 1
    with pytest.raises(ValueError, match=r"sample 1: position_ids\[7\]"):
        T.check_positions(wrong, b["cu_seqlens"])
    with pytest.raises(ValueError, match="cu_seqlens must run from 0 to batch x seq"):
        T.check_positions(b["position_ids"], b["cu_seqlens"][:-1])


def _rotate_reference(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE as transformers writes it (half rotation), from explicit positions: [T, h, d]."""
    dim = x.shape[-1]
    inv = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = positions.double()[:, None] * inv
    cos, sin = torch.cat([angles.cos()] * 2, -1)[:, None], torch.cat([angles.sin()] * 2, -1)[:, None]
    x1, x2 = x.double().chunk(2, dim=-1)
    return (x.double() * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


def test_megatron_thd_rotary_restarts_per_document(world1):
    """megatron-core's thd RoPE (what TE's path runs) equals RoPE at SOLO's per-document position_ids."""
    from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    from megatron_solo.model.transformer_config import build_transformer_config

    init_parallel(ParallelConfig(), seed=0)
    cfg = SB.tiny_solo_config()
    config = build_transformer_config(cfg, ParallelConfig())
    b = _micro_batch(2)
    batch, seq = b["tokens"].shape
    cu = b["cu_seqlens"]
    max_len = int((cu[1:] - cu[:-1]).max())
    rope = RotaryEmbedding(cfg.kv_channels, 1.0, rotary_base=int(cfg.rotary_base), use_cpu_initialization=True)
    q = torch.randn(batch * seq, cfg.num_attention_heads, cfg.kv_channels, dtype=torch.float64)
    ours = apply_rotary_pos_emb(q, rope(max_len, packed_seq=True).double(), config, cu_seqlens=cu)
    expected = _rotate_reference(q, T.flatten_tokens(b["position_ids"])[0], cfg.rotary_base)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)  # megatron builds angles in fp32
    # the whole-pack numbering (what thd would do without restarts) is far from it
    whole = _rotate_reference(q, torch.arange(batch * seq), cfg.rotary_base)
    assert (whole - expected).abs().max() > 0.1


def _pair(world1, **overrides):
    """The same weights as an sbhd and a thd SoloModel (local spec), fp32."""
    init_parallel(ParallelConfig(), seed=3)
    torch.manual_seed(3)
    cfg = SB.tiny_solo_config(**overrides)
    sbhd = build_solo_model(cfg, ParallelConfig(), packed_format="sbhd")
    thd = build_solo_model(cfg, ParallelConfig(), packed_format="thd")
    thd.load_state_dict(sbhd.state_dict())
    return sbhd, thd


def _run(model, b, labels: bool):
    b = to_device(b, current_device())
    params = packed_seq_params(b["cu_seqlens"], b["tokens"].shape[1], thd=model.packed_format == "thd")
    return model(b["tokens"], b["position_ids"], labels=b["labels"] if labels else None, patches=b["patches"],
                 packed_seq_params=params, num_patches=b["num_patches"])


@pytest.mark.parametrize("window", [None, 5])
def test_thd_model_equals_sbhd_model(world1, window):
    sbhd, thd = _pair(world1, sliding_window=window)
    b = _micro_batch(3, batch=2)
    with torch.no_grad():
        logits = [_run(m.eval(), b, labels=False) for m in (sbhd, thd)]
    assert logits[1].shape == logits[0].shape == (2, 40, sbhd.vocab_size)
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-5)
    losses = []
    for m in (sbhd, thd):
        m.train()
        m.zero_grad()
        loss = _run(m, b, labels=True)
        assert loss.shape == (2, 40)
        (loss * b["loss_mask"]).sum().backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    grads = [dict((n, p.grad) for n, p in m.named_parameters()) for m in (sbhd, thd)]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("overrides", [
    dict(rope_scaling=RopeScaling("llama3", 8.0, 8)),
    dict(rope_scaling=RopeScaling("yarn", 4.0, 8), head_dim=32, qk_layernorm=True),
], ids=["llama3", "yarn-qk-norms-head-dim"])
def test_thd_equals_sbhd_with_scaled_rope_qk_norms_and_a_head_width_of_its_own(world1, overrides):
    """megatron-core's thd RoPE table (per document from cu_seqlens; YaRN's cos/sin factor applied in attention)
    against the sbhd path's rows by position_ids, on documents longer than the original context."""
    sbhd, thd = _pair(world1, **overrides)
    b = _micro_batch(6, batch=2)
    assert int((b["cu_seqlens"][1:] - b["cu_seqlens"][:-1]).max()) > 8
    with torch.no_grad():
        logits = [_run(m.eval(), b, labels=False) for m in (sbhd, thd)]
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-5)


def test_thd_pack_of_documents_equals_each_alone(world1):
    _, model = _pair(world1, sliding_window=4)
    model.eval()
    g = torch.Generator().manual_seed(5)
    docs = [SB.document(g, with_image=i != 1) for i in range(3)]
    whole = SB.pack(g, sum(len(d[0]) for d in docs), docs)
    with torch.no_grad():
        packed = _run(model, whole, labels=False)
        start, first_patch = 0, 0
        for ids, n in docs:
            alone = SB.pack(g, len(ids), [(ids, n)])
            alone["patches"] = whole["patches"][first_patch:first_patch + n]
            single = _run(model, alone, labels=False)
            torch.testing.assert_close(packed[:, start:start + len(ids)], single, rtol=1e-5, atol=1e-5)
            start += len(ids)
            first_patch += n


def test_thd_model_refuses_positions_that_do_not_restart(world1):
    _, model = _pair(world1)
    b = _micro_batch(4)
    b["position_ids"][0, 3] = 0
    b["position_ids"][0, 4:] = torch.arange(1, 1 + b["position_ids"].shape[1] - 4)
    with pytest.raises(ValueError, match="restart at 0 at every cu_seqlens boundary"), torch.no_grad():
        _run(model.eval(), b, labels=False)
