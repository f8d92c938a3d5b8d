"""Models, data and training runs of the GPU checks (importable by spawned processes)."""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tests.harness.mix import learnable_pack, make_pack, micro_batch

if TYPE_CHECKING:
    from megatron_solo.config import SoloModelConfig, TrainConfig

Trainer = tuple[list[torch.nn.Module], object, object]  # (model chunks, optimizer, scheduler)


def import_small_mistral(root: Path, smoke: bool) -> str:
    """A random HF Mistral (norms perturbed, so a swapped norm shows) imported with the SOLO tokens."""
    from megatron_solo.config import ParallelConfig
    from megatron_solo.hf.importer import import_hf
    from megatron_solo.vocab import default_tokenizer_path
    from tests.harness.ckpt_models import save_hf, small_hf_model

    shape = dict(hidden=64, layers=2, heads=4, ffn=128) if smoke else dict(hidden=256, layers=4, heads=8, ffn=704)
    hf_dir = save_hf(small_hf_model("mistral", kv_heads=2, max_positions=4096, **shape), root / "hf")
    import_hf(hf_dir, root / "imported", ParallelConfig(), tokenizer=default_tokenizer_path(), progress=False)
    return str(root / "imported")


def batches(seed: int, seq: int, count: int, batch: int = 2, learnable: bool = False) -> list[dict]:
    """``count`` micro-batches of ``batch`` packs each, reproducible from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    pack = learnable_pack if learnable else make_pack
    return [micro_batch([pack(seq, g) for _ in range(batch)]) for _ in range(count)]


def reference_config(cfg: SoloModelConfig, window: int | None) -> SoloModelConfig:
    """``cfg`` as a reference model: local spec, the exact SDPA mask path and no fused kernels.

    Nothing in it compiles (FlexAttention compiles once per shape, megatron's fused kernels on first
    use), which would cost the time-limited TE check more than its comparisons.
    """
    return dataclasses.replace(cfg, sliding_window=window, transformer_impl="local", packed_attention="sdpa_mask",
                               fused_kernels=False)


def copy_weights(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """``src``'s weights into ``dst`` by canonical (checkpoint) name, whichever spec built each."""
    from megatron_solo.checkpoint.names import canonical_name, canonical_state_dict, is_extra_state

    sd = canonical_state_dict(src.state_dict())
    own = {k: sd[canonical_name(k)] for k in dst.state_dict() if not is_extra_state(k)}
    missing, unexpected = dst.load_state_dict(own, strict=False)
    leftover = [k for k in missing if not is_extra_state(k)]
    if leftover or unexpected:
        raise AssertionError(f"weights do not map: missing {leftover}, unexpected {unexpected}")


def logits(model: torch.nn.Module, b: dict, cfg: SoloModelConfig) -> torch.Tensor:
    """[B, S, vocab] logits of a collated micro-batch, documents kept apart."""
    from megatron_solo.platform import current_device
    from megatron_solo.training.forward_step import packed_seq_params, to_device

    b = to_device(b, current_device())
    params = packed_seq_params(b["cu_seqlens"], b["tokens"].shape[1], thd=model.packed_format == "thd")
    with torch.no_grad():
        out = model(b["tokens"], b["position_ids"], patches=b["patches"], packed_seq_params=params)
    return out[..., : cfg.vocab_size].float().cpu()


def documents_alone(model: torch.nn.Module, b: dict, cfg: SoloModelConfig) -> torch.Tensor:
    """Logits of the first pack of ``b`` computed one document at a time, concatenated."""
    from megatron_solo.vocab import VPATCH_ID

    cu = b["cu_seqlens"].tolist()
    seq = b["tokens"].shape[1]
    outs, first_patch = [], 0
    for a, e in zip(cu, cu[1:]):
        if a >= seq:  # the first pack ends here
            break
        tokens = b["tokens"][:1, a:e]
        n = int((tokens == VPATCH_ID).sum())
        one = dict(tokens=tokens, position_ids=b["position_ids"][:1, a:e], patches=b["patches"][first_patch:first_patch + n],
                   cu_seqlens=torch.tensor([0, e - a], dtype=torch.int32))
        first_patch += n
        outs.append(logits(model, one, cfg))
    return torch.cat(outs, dim=1)


def probe(import_dir: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(tokens [1, S], SOLO patches, HF processor inputs) of one image + prompt."""
    from PIL import Image

    from megatron_solo.hf.processor import SoloProcessor, fuyu_image_key, fuyu_to_solo_patches
    from megatron_solo.vocab import load_tokenizer

    g = torch.Generator().manual_seed(0)
    image = Image.fromarray(torch.randint(0, 256, (45, 70, 3), generator=g, dtype=torch.uint8).numpy())
    inputs = SoloProcessor(load_tokenizer(Path(import_dir) / "tokenizer"))("What is shown here?", images=image)
    return inputs["input_ids"], fuyu_to_solo_patches(inputs[fuyu_image_key()]), inputs


def probe_logits(model: torch.nn.Module, import_dir: str, cfg: SoloModelConfig) -> torch.Tensor:
    """Logits of :func:`probe`'s image + prompt (one document, positions 0..S-1)."""
    from megatron_solo.platform import current_device

    tokens, patches, _ = probe(import_dir)
    dev = current_device()
    positions = torch.arange(tokens.shape[1], device=dev)[None]
    with torch.no_grad():
        out = model(tokens.to(dev), positions, patches=patches.to(dev))
    return out[..., : cfg.vocab_size].float().cpu()


def run_root(import_dir: str, root: Path) -> str:
    """A save root holding the import's solo_model.json and tokenizer (what export reads)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(import_dir) / "solo_model.json", root / "solo_model.json")
    shutil.copytree(Path(import_dir) / "tokenizer", root / "tokenizer", dirs_exist_ok=True)
    return str(root)


def build_trainer(model_cfg: SoloModelConfig, train: TrainConfig, seed: int, packed_format: str | None = None) -> Trainer:
    """(chunks, optimizer, scheduler): DDP and megatron-core's distributed optimizer, bf16, one rank."""
    from megatron_solo.config import ParallelConfig
    from megatron_solo.model.builder import solo_provider
    from megatron_solo.model.chunks import build_model_chunks
    from megatron_solo.platform import init_parallel
    from megatron_solo.training.ddp import wrap_ddp
    from megatron_solo.training.optimizer import build_optimizer, build_scheduler

    parallel = ParallelConfig(use_distributed_optimizer=True)
    init_parallel(parallel, seed=seed)
    torch.manual_seed(seed)
    provider = solo_provider(model_cfg, parallel, bf16=True, packed_format=packed_format)
    chunks = wrap_ddp(build_model_chunks(provider, parallel), parallel)
    optimizer = build_optimizer(chunks, train, parallel)
    return chunks, optimizer, build_scheduler(optimizer, train)


@functools.cache
def step_data(seed: int, seq: int, micro: int) -> list[dict]:
    """The two learnable micro-batches of the step seeded ``seed`` (the same in every run; made once)."""
    return batches(seed, seq, 2, batch=micro, learnable=True)


def train(trainer: Trainer, steps: range, seq: int, micro: int, data_seed: int) -> list[float]:
    """Losses of ``steps`` training steps, step ``i`` on ``step_data(data_seed + i)``."""
    from megatron_solo.training.forward_step import solo_forward_step
    from megatron_solo.training.step import train_step

    chunks, optimizer, scheduler = trainer
    return [train_step(solo_forward_step, [iter(step_data(data_seed + step, seq, micro))], chunks, optimizer,
                       scheduler, num_microbatches=2, seq_length=seq, micro_batch_size=micro).loss
            for step in steps]


# The FP8 check's small SOLO: every FP8 GEMM dimension a multiple of 16 (TE's requirement):
# 2 x 1024 tokens, width 512, FFN 1536; the smoke run's is tiny.
FP8_SHAPES = {
    "gpu": dict(seq=1024, micro=2, steps=250, model=dict(num_layers=4, hidden_size=512, num_attention_heads=8,
                                                         num_query_groups=2, ffn_hidden_size=1536)),
    "smoke": dict(seq=512, micro=2, steps=8, model=dict(num_layers=2, hidden_size=64, num_attention_heads=4,
                                                        num_query_groups=2, ffn_hidden_size=128)),
}
FP8_DATA_SEED = 10_000


def fp8_trainer(fp8: str | None, recipe: str, smoke: bool) -> Trainer:
    """The FP8 check's small SOLO (TE spec; local bf16 on the smoke run) with its optimizer and schedule."""
    from megatron_solo.config import TrainConfig, model_preset
    from megatron_solo.config.train import OptimConfig

    s = FP8_SHAPES["smoke" if smoke else "gpu"]
    cfg = model_preset("solo-small", **s["model"], transformer_impl="local" if smoke else "te",
                       fp8=None if smoke else fp8, fp8_recipe=recipe, fp8_amax_history_len=16)
    train_cfg = TrainConfig(micro_batch_size=s["micro"], global_batch_size=2 * s["micro"], seq_length=s["seq"],
                            train_steps=s["steps"], bf16=True,
                            optim=OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=max(1, s["steps"] // 10)))
    return build_trainer(cfg, train_cfg, seed=11)


def fp8_train(trainer: Trainer, steps: range, smoke: bool) -> list[float]:
    """Losses of the FP8 check's ``steps`` (the same data in every run)."""
    s = FP8_SHAPES["smoke" if smoke else "gpu"]
    return train(trainer, steps, s["seq"], s["micro"], FP8_DATA_SEED)


def fp8_resume(checkpoint: str, recipe: str, smoke: bool, steps: int, out: str) -> None:
    """Spawned (a fresh process): resume the FP8 checkpoint, run ``steps`` more, write the losses."""
    from megatron_solo.checkpoint.state import load_checkpoint

    trainer = fp8_trainer("hybrid", recipe, smoke)
    state = load_checkpoint(checkpoint, *trainer)
    total = FP8_SHAPES["smoke" if smoke else "gpu"]["steps"]
    losses = fp8_train(trainer, range(state.iteration, min(state.iteration + steps, total)), smoke)
    Path(out).write_text(json.dumps({"from": state.iteration, "losses": losses}))

