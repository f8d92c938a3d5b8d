"""SoloModel against an independent transformers reference, packing, loss mask, bad input."""

from __future__ import annotations

import pytest
import torch

from megatron_solo.config import ParallelConfig
from megatron_solo.model.builder import build_solo_model
from megatron_solo.platform import current_device, init_parallel
from megatron_solo.training.forward_step import packed_seq_params, to_device
from tests.harness import solo_batches as SB
from tests.harness.hf_reference import reference_logits


def _model(world1, bf16=False, **overrides):
    init_parallel(ParallelConfig(), seed=3)
    torch.manual_seed(3)
    cfg = SB.tiny_solo_config(**overrides)
    model = build_solo_model(cfg, ParallelConfig(), bf16=bf16).eval()
    return cfg, model


def _logits(model, b, cu=True):
    b = to_device(b, current_device())
    params = packed_seq_params(b["cu_seqlens"], b["tokens"].shape[1], thd=False) if cu else None
    with torch.no_grad():
        out = model(b["tokens"], b["position_ids"], patches=b["patches"], packed_seq_params=params)
    return out.float().cpu()


@pytest.mark.parametrize("window", [None, 6])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_matches_transformers_mistral_reference(world1, window, bf16):
    cfg, model = _model(world1, bf16=bf16, sliding_window=window)
    g = torch.Generator().manual_seed(0)
    doc = SB.document(g, with_image=True)
    b = SB.pack(g, len(doc[0]), [doc])
    ours = _logits(model, b)[..., : cfg.vocab_size]  # drop the padding rows of the vocabulary
    ref = reference_logits(model, cfg, b["tokens"], b["patches"])  # fp32 on the CPU
    assert ours.shape == ref.shape
    scale = max(1.0, ref.abs().max().item())
    # fp32: exact to rounding; bf16: within bf16's ~3 significant digits over 4 layers.
    tolerance = 2e-2 if bf16 else 1e-5
    assert (ours - ref).abs().max() <= tolerance * scale, (ours - ref).abs().max()


def test_pack_of_three_documents_equals_each_alone(world1):
    cfg, model = _model(world1, sliding_window=5)
    g = torch.Generator().manual_seed(1)
    docs = [SB.document(g, with_image=i != 1) for i in range(3)]
    total = sum(len(d[0]) for d in docs)
    start, first_patch = 0, 0
    whole = SB.pack(g, total, docs)
    packed = _logits(model, whole)
    for ids, n in docs:
        alone = SB.pack(g, len(ids), [(ids, n)])
        alone["patches"] = whole["patches"][first_patch:first_patch + n]
        single = _logits(model, alone)
        torch.testing.assert_close(packed[:, start:start + len(ids)], single, rtol=1e-5, atol=1e-5)
        start += len(ids)
        first_patch += n


def test_patches_reach_later_text_but_carry_no_loss(world1):
    cfg, model = _model(world1)
    g = torch.Generator().manual_seed(2)
    doc = SB.document(g, with_image=True)
    b = SB.pack(g, len(doc[0]), [doc])
    base = _logits(model, b)
    changed = dict(b, patches=b["patches"].clone())
    changed["patches"][0, :100] += 1.0
    after = _logits(model, changed)
    first_vpatch = int((b["tokens"][0] == SB.VPATCH).nonzero()[0])
    last_vision = int((b["tokens"][0] >= SB.VISION).nonzero()[-1])
    assert torch.equal(base[:, :first_vpatch], after[:, :first_vpatch])  # causal: nothing before changes
    assert not torch.allclose(base[:, last_vision + 1:], after[:, last_vision + 1:])  # later text sees it
    vision_positions = (b["tokens"][0] >= SB.VISION) | (b["labels"][0] >= SB.VISION)
    assert vision_positions.any()
    assert (b["loss_mask"][0][vision_positions] == 0).all()
    # per-token losses at masked positions do not enter the loss sum
    from megatron_solo.training.loss import masked_token_loss

    with torch.no_grad():
        d = to_device(b, current_device())
        losses = model(d["tokens"], d["position_ids"], labels=d["labels"], patches=d["patches"]).cpu()
    poisoned = losses.clone()
    poisoned[0, vision_positions] = 1e6
    assert masked_token_loss(b["loss_mask"], losses)[0] == masked_token_loss(b["loss_mask"], poisoned)[0]


def test_text_only_batch_gives_projection_a_zero_gradient(world1):
    cfg, model = _model(world1)
    model.train()
    tokens = torch.randint(1, SB.VISION, (1, 12)).to(current_device())
    out = model(tokens, torch.arange(12, device=tokens.device)[None], labels=tokens, patches=None)
    out.sum().backward()
    grad = model.patch_projection.weight.grad
    assert grad is not None and torch.count_nonzero(grad) == 0


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b.update(patches=b["patches"][:-1]), "<vpatch> tokens .* but 1 patches"),
        (lambda b: b.update(patches=b["patches"][:, :100]), "patches must be"),
        (lambda b: b["position_ids"].__setitem__((0, 3), 10_000), "past the sequence"),
        (lambda b: b.update(num_patches=b["num_patches"] + 1), "sample 0"),
    ],
)
def test_bad_input_is_a_clear_value_error(world1, mutate, message):
    cfg, model = _model(world1)
    g = torch.Generator().manual_seed(4)
    doc = SB.document(g, with_image=True)
    b = SB.pack(g, len(doc[0]), [doc])
    mutate(b)
    b = to_device(b, current_device())
    with pytest.raises(ValueError, match=message):
        with torch.no_grad():
            model(b["tokens"], b["position_ids"], patches=b["patches"], num_patches=b["num_patches"])
