"""The plain transformers training loop on SoloModel's shape: the peer the GPU timing compares against.

MistralForCausalLM of the same width and depth plus a bias-free patch linear, fp32 master
weights under bf16 autocast (what ``Trainer(bf16=True)`` does; on the CPU smoke run too, so the
mixed-precision path is the one checked), fused AdamW on the GPU, gradient accumulation over the
same micro-batches. Attention is whatever transformers picks for packed
inputs with per-document ``position_ids`` (SDPA); no megatron-core, no Transformer Engine.
"""

from __future__ import annotations

import torch

from megatron_solo.vocab import VPATCH_ID


def build_peer(cfg, device: torch.device):
    """(model, patch linear, optimizer) of ``cfg``'s shape on ``device``."""
    from transformers import MistralConfig, MistralForCausalLM

    hf = MistralConfig(vocab_size=cfg.padded_vocab_size(1), hidden_size=cfg.hidden_size,
                       intermediate_size=cfg.ffn_hidden_size, num_hidden_layers=cfg.num_layers,
                       num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_query_groups,
                       head_dim=cfg.kv_channels, max_position_embeddings=cfg.max_position_embeddings,
                       sliding_window=cfg.sliding_window, rope_theta=cfg.rotary_base, tie_word_embeddings=False)
    hf._attn_implementation = "sdpa"
    with torch.device(device):
        model = MistralForCausalLM(hf)
        proj = torch.nn.Linear(cfg.patch_dim, cfg.hidden_size, bias=False)
    params = [*model.parameters(), *proj.parameters()]
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)
    return model, proj, optimizer


def peer_step(model, proj, optimizer, micro_batches: list[dict], device: torch.device,
              autocast_dtype: torch.dtype | None = torch.bfloat16) -> float:
    """One optimizer step over ``micro_batches`` (token-weighted mean loss, like ours); returns the loss.

    ``autocast_dtype``: the autocast precision (None: plain fp32, the reference the test compares with).
    """
    autocast = torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None)
    tokens_total = sum(float(b["loss_mask"].sum()) for b in micro_batches)
    loss_sum = 0.0
    for b in micro_batches:
        b = {k: v.to(device, non_blocking=True) for k, v in b.items() if torch.is_tensor(v)}
        with autocast:
            embeds = model.model.embed_tokens(b["tokens"])
            rows, cols = (b["tokens"] == VPATCH_ID).nonzero(as_tuple=True)
            # The embedding stays fp32 under autocast while the linear gives bf16: index_put needs one dtype.
            patch_embeds = proj(b["patches"].to(embeds.dtype)).to(embeds.dtype)
            embeds = embeds.index_put((rows, cols), patch_embeds, accumulate=True)
            logits = model(inputs_embeds=embeds, position_ids=b["position_ids"]).logits
        losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), b["labels"].flatten(), reduction="none")
        loss = (losses * b["loss_mask"].flatten()).sum() / tokens_total
        loss.backward()
        loss_sum += float(loss.detach())
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum
