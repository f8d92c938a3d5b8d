"""One CPU training step of a small SOLO model: SoloModel (megatron-core, TP1) vs a plain
transformers MistralForCausalLM + patch linear doing the same work. Prints the ratio (goal <= 1.2x).

Both: 4 layers, hidden 256, a packed 1024-token sequence with images, forward + backward
+ AdamW step, fp32. Ours runs through megatron-core's schedule and distributed
optimizer with document-masked attention; the reference uses SDPA with a causal mask
over the same tokens. Median of several steps, measured alternately in one run.

  python benchmarks/bench_model_step.py [--steps 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository, for tests.harness
from megatron_solo.config import ParallelConfig, TrainConfig, model_preset  # noqa: E402
from megatron_solo.config.train import OptimConfig  # noqa: E402
from tests.harness.mix import make_pack  # noqa: E402

SEQ = 1024


def build_ours(cfg):
    """SoloModel at TP1 with megatron-core's DDP and distributed optimizer."""
    from megatron_solo.model.builder import solo_provider
    from megatron_solo.model.chunks import build_model_chunks
    from megatron_solo.platform import init_distributed, init_parallel
    from megatron_solo.training.ddp import wrap_ddp
    from megatron_solo.training.optimizer import build_optimizer, build_scheduler

    init_distributed()
    parallel = ParallelConfig()
    init_parallel(parallel, seed=0)
    train = TrainConfig(micro_batch_size=1, global_batch_size=1, seq_length=SEQ, train_steps=1000, bf16=False,
                        optim=OptimConfig(lr=1e-4, warmup_steps=0))
    chunks = wrap_ddp(build_model_chunks(solo_provider(cfg, parallel), parallel), parallel)
    opt = build_optimizer(chunks, train, parallel)
    return chunks, opt, build_scheduler(opt, train)


def build_reference(cfg):
    """transformers Mistral of the same shape, a bias-free patch linear and torch AdamW."""
    from transformers import MistralConfig, MistralForCausalLM

    hf = MistralConfig(vocab_size=cfg.padded_vocab_size(1), hidden_size=cfg.hidden_size,
                       intermediate_size=cfg.ffn_hidden_size, num_hidden_layers=cfg.num_layers,
                       num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_query_groups,
                       max_position_embeddings=cfg.max_position_embeddings, sliding_window=None,
                       tie_word_embeddings=False)
    hf._attn_implementation = "sdpa"
    model = MistralForCausalLM(hf)
    proj = torch.nn.Linear(cfg.patch_dim, cfg.hidden_size, bias=False)
    opt = torch.optim.AdamW([*model.parameters(), *proj.parameters()], lr=1e-4)
    return model, proj, opt


def step_reference(model, proj, opt, pack) -> None:
    """Forward with the additive patch merge, masked loss, backward, AdamW."""
    tokens = pack["tokens"]
    embeds = model.model.embed_tokens(tokens)
    b, s = (tokens == 32001).nonzero(as_tuple=True)
    embeds = embeds.index_put((b, s), proj(pack["patches"]), accumulate=True)
    logits = model(inputs_embeds=embeds, position_ids=pack["position_ids"]).logits
    losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), pack["labels"].flatten(), reduction="none")
    loss = (losses * pack["loss_mask"].flatten()).sum() / pack["loss_mask"].sum()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    """Time both alternately and print medians and the ratio."""
    from megatron_solo.training.forward_step import solo_forward_step
    from megatron_solo.training.step import train_step

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    cfg = model_preset("solo-small", sliding_window=None)
    chunks, opt, sched = build_ours(cfg)
    model, proj, ref_opt = build_reference(cfg)
    pack = make_pack(SEQ, torch.Generator().manual_seed(0))
    ours, ref = [], []
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        train_step(solo_forward_step, [iter([pack])], chunks, opt, sched, num_microbatches=1, seq_length=SEQ,
                   micro_batch_size=1)
        t1 = time.perf_counter()
        step_reference(model, proj, ref_opt, pack)
        t2 = time.perf_counter()
        if i:  # the first step of each warms up
            ours.append(t1 - t0)
            ref.append(t2 - t1)
    a, b = statistics.median(ours), statistics.median(ref)
    patches = pack["patches"].shape[0]
    print(f"solo-small (4 layers, hidden 256), seq {SEQ} with {patches} patches, fp32, CPU, {args.steps} steps")
    print(f"SoloModel (megatron-core TP1): median {a:.3f} s/step")
    print(f"transformers Mistral + patch linear: median {b:.3f} s/step")
    print(f"ratio ours / reference: {a / b:.2f}x (goal <= 1.2x)")


if __name__ == "__main__":
    main()
