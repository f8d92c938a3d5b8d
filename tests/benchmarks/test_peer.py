"""The transformers peer of the GPU speed table (benchmarks/gpu/peer.py) trains under bf16 autocast on the CPU too.

On the GPU it always runs under autocast, where the fp32 token embedding meets the bf16 patch projection;
running it here the same way is what catches a dtype mismatch before GPU time is spent on it.
"""

from __future__ import annotations

import copy
import importlib.util
import math

import torch

from megatron_solo.config import model_preset
from tests.harness.mix import make_pack, micro_batch
from tests.harness.paths import REPO


def _peer():
    spec = importlib.util.spec_from_file_location("gpu_peer", REPO / "benchmarks" / "gpu" / "peer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peer_step_runs_under_bf16_autocast_and_matches_fp32():
    peer = _peer()
    cfg = model_preset("solo-tiny", num_layers=2)  # the SOLO vocabulary: its <vpatch> is the peer's
    device = torch.device("cpu")
    g = torch.Generator().manual_seed(3)
    micro = [micro_batch([make_pack(512, g, vision_share=0.5)]) for _ in range(2)]
    assert all(int((b["tokens"] == cfg.vpatch_token_id).sum()) > 0 for b in micro)  # the patch path runs
    torch.manual_seed(0)
    model, proj, optimizer = peer.build_peer(cfg, device)
    ref_model, ref_proj = copy.deepcopy(model), copy.deepcopy(proj)
    ref_opt = torch.optim.AdamW([*ref_model.parameters(), *ref_proj.parameters()], lr=1e-5)
    seen = []
    model.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    loss = peer.peer_step(model, proj, optimizer, micro, device)
    reference = peer.peer_step(ref_model, ref_proj, ref_opt, micro, device, autocast_dtype=None)
    assert seen == [torch.bfloat16, torch.bfloat16]  # autocast on, as on the GPU
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    assert math.isfinite(loss) and abs(loss - reference) <= 0.02 * reference, (loss, reference)
