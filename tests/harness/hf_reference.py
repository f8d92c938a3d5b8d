"""An independent SOLO reference: transformers' MistralForCausalLM plus a plain patch linear."""

from __future__ import annotations

import torch

from megatron_solo.hf.adapters import decoder_adapter


def reference_logits(model, cfg, tokens: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Logits of the HF reference with ``model``'s weights copied in (TP1, fp32)."""
    from transformers import MistralConfig, MistralForCausalLM

    hf_cfg = MistralConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups, head_dim=cfg.kv_channels, rms_norm_eps=cfg.norm_epsilon,
        rope_theta=cfg.rotary_base, sliding_window=cfg.sliding_window,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=False,
    )
    hf_cfg._attn_implementation = "eager"
    ref = MistralForCausalLM(hf_cfg).eval()
    sd = {k: v.float().cpu() for k, v in model.state_dict().items() if "_extra_state" not in k}
    ref.load_state_dict(dict(decoder_adapter(cfg).to_hf(sd, cfg)), strict=True)
    proj = torch.nn.Linear(cfg.patch_dim, cfg.hidden_size, bias=False)
    proj.weight.data.copy_(sd["patch_projection.weight"])
    with torch.no_grad():
        embeds = ref.model.embed_tokens(tokens)
        b_idx, s_idx = (tokens == cfg.vpatch_token_id).nonzero(as_tuple=True)
        embeds[b_idx, s_idx] += proj(patches)
        return ref(inputs_embeds=embeds).logits
