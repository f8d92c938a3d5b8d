"""The Transformer Engine path's forward reads nothing of the batch on the host once it is on the device.

On the CPU the local spec's thd attention stands for TE's kernel (its own reads are not counted), and a
plain-torch RoPE with TE's fused-kernel contract (positions restarting at each ``cu_seqlens`` boundary, one
table row per position) stands for TE's fused RoPE.
"""

from __future__ import annotations

import pytest
import torch
from megatron.core.models.common.embeddings import rope_utils

from megatron_solo.config import ParallelConfig
from megatron_solo.config.model import RopeScaling
from megatron_solo.model import thd as T
from megatron_solo.model.builder import build_solo_model
from megatron_solo.model.transformer_config import build_transformer_config
from megatron_solo.platform import init_parallel
from megatron_solo.training import forward_step
from tests.harness import host_syncs as H
from tests.harness import solo_batches as SB
from tests.model.test_thd import _micro_batch


def _fused_thd(t, cu_seqlens, freqs, cp_size=1, cp_rank=0):
    positions = T.document_positions(cu_seqlens, t.shape[0])
    return rope_utils._apply_rotary_pos_emb_bshd(t.unsqueeze(1), freqs[positions]).squeeze(1)


def _fused_bshd(t, freqs, interleaved=False):
    assert freqs.shape[1:3] == (1, 1), "TE's fused kernel takes one row per position"
    return rope_utils._apply_rotary_pos_emb_bshd(t, freqs)


@pytest.fixture
def fused_rope(monkeypatch):
    """TE's fused RoPE entry points in megatron-core, answered in plain torch."""
    monkeypatch.setattr(rope_utils, "fused_apply_rotary_pos_emb_thd", _fused_thd)
    monkeypatch.setattr(rope_utils, "fused_apply_rotary_pos_emb", _fused_bshd)


def _model(fused: bool, packed_format: str = "thd"):
    init_parallel(ParallelConfig(), seed=3)
    torch.manual_seed(3)
    model = build_solo_model(SB.tiny_solo_config(), ParallelConfig(), packed_format=packed_format).eval()
    model.config.apply_rope_fusion = fused  # what build_transformer_config sets on the TE path
    return model


def _step(model, batch, monkeypatch) -> tuple[torch.Tensor, list[str]]:
    """The training forward step on ``batch``, its copy to the "device" made of DeviceTensors."""
    monkeypatch.setattr(forward_step, "to_device", lambda b, device: H.on_device(b))
    cores = [layer.self_attention.core_attention for layer in model.decoder.layers]
    with torch.no_grad(), H.counting(skip=cores) as reads:
        losses, _ = forward_step.solo_forward_step(iter([batch]), model)
    return losses, list(reads)


def test_rope_runs_fused_on_the_te_path_except_for_yarn(fused_rope):
    cfg = SB.tiny_solo_config()
    assert build_transformer_config(cfg, ParallelConfig(), bf16=True, use_te=True).apply_rope_fusion
    assert not build_transformer_config(cfg, ParallelConfig(), bf16=True).apply_rope_fusion
    yarn = SB.tiny_solo_config(rope_scaling=RopeScaling("yarn", 4.0, 8))
    assert not build_transformer_config(yarn, ParallelConfig(), bf16=True, use_te=True).apply_rope_fusion


def test_a_transformer_engine_without_fused_rope_keeps_the_unfused_path():
    assert rope_utils.fused_apply_rotary_pos_emb_thd is None  # this CPU machine has no TE
    cfg = SB.tiny_solo_config()
    assert not build_transformer_config(cfg, ParallelConfig(), bf16=True, use_te=True).apply_rope_fusion


def test_the_te_path_reads_no_device_value_on_the_host(world1, fused_rope, monkeypatch):
    batch = _micro_batch(3)
    fused, reads = _step(_model(fused=True), batch, monkeypatch)
    assert reads == []
    # megatron-core's unfused thd RoPE reads document lengths in every layer: what the count would see
    unfused, reads = _step(_model(fused=False), batch, monkeypatch)
    assert sum("rope_utils" in r for r in reads) >= 2 * SB.tiny_solo_config().num_layers
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)


def test_the_batch_is_still_checked_on_the_host(world1, monkeypatch):
    batch = _micro_batch(3)
    batch["tokens"][1, 5] = 10**6
    with pytest.raises(ValueError, match="sample 1: token id 1000000 at position 5 is outside the vocabulary"):
        _step(_model(fused=False), batch, monkeypatch)


def test_fused_rope_without_document_boundaries_takes_one_row_per_position(world1, fused_rope):
    batch = _micro_batch(4)
    batch["position_ids"] = torch.arange(batch["tokens"].shape[1]).expand_as(batch["tokens"]).clone()
    outputs = []
    for fused in (True, False):
        model = _model(fused, packed_format="sbhd")
        with torch.no_grad():
            outputs.append(model(batch["tokens"], batch["position_ids"], patches=batch["patches"]))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    batch["position_ids"][1] = torch.roll(batch["position_ids"][1], 1)
    with pytest.raises(ValueError, match="need packed_seq_params .* fused RoPE"), torch.no_grad():
        model = _model(True, packed_format="sbhd")
        model(batch["tokens"], batch["position_ids"], patches=batch["patches"])
