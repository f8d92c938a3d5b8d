"""Evaluation throughput next to the training rate, on the same data, in one run (CPU by default).

A short solo-tiny run trains on real ImageNet photos (the quick start's shards); its checkpoint is
then evaluated (validation loss over the same shards, each image on its own; and a yes/no benchmark file in
POPE's form over the same photos, answered by generation as the harnesses do) through megatron-core and,
after export, through stock transformers. Prints training steps/s and images/s, evaluation and benchmark
images/s of both backends, and the ratios evaluation / training.

  python benchmarks/bench_eval.py [--steps 6] [--max-side 256] [--seq-length 1024] [--eval-repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from megatron_solo.config import ParallelConfig, TrainConfig, model_preset
from megatron_solo.config.data import DataConfig, DatasetSource, PreprocessConfig
from megatron_solo.config.train import OptimConfig
from megatron_solo.vocab import SOLO_CHAT_VOCAB_SIZE, VISION_START_ID


def build_shards(root: Path, max_side: int) -> str:
    """The quick start's ImageNet photos as classification shards."""
    from megatron_solo.data.demo_sources import write_imagenet_classification
    from megatron_solo.data.preprocess import preprocess

    folder, names = write_imagenet_classification(str(root / "raw"))
    out = root / "shards"
    preprocess(PreprocessConfig(kind="classification", inputs=[folder], output=str(out), class_names=names,
                                caption_template="a photo of a {}.", max_side=max_side, workers=0), progress=False)
    return str(out)


def train(shards: str, save: Path, steps: int, seq: int, batch: int) -> tuple[float, float]:
    """Train solo-tiny for ``steps`` steps and save it; (median seconds per step, images per step)."""
    from megatron_solo.checkpoint.metadata import write_run_files
    from megatron_solo.checkpoint.state import TrainState, save_checkpoint
    from megatron_solo.data.loader import build_data_loader
    from megatron_solo.model.builder import solo_provider
    from megatron_solo.model.chunks import build_model_chunks
    from megatron_solo.platform import init_distributed, init_parallel
    from megatron_solo.training.ddp import wrap_ddp
    from megatron_solo.training.forward_step import solo_forward_step
    from megatron_solo.training.optimizer import build_optimizer, build_scheduler
    from megatron_solo.training.step import train_step
    from megatron_solo.vocab.tokenizers import tokenizer_for_vocab

    init_distributed()
    parallel = ParallelConfig()
    init_parallel(parallel, seed=0)
    cfg = model_preset("solo-tiny", vocab_size=SOLO_CHAT_VOCAB_SIZE)
    tcfg = TrainConfig(micro_batch_size=1, global_batch_size=batch, seq_length=seq, train_steps=steps, bf16=False,
                       optim=OptimConfig(lr=1e-3, warmup_steps=1))
    chunks = wrap_ddp(build_model_chunks(solo_provider(cfg, parallel), parallel), parallel)
    opt = build_optimizer(chunks, tcfg, parallel)
    sched = build_scheduler(opt, tcfg)
    loader = iter(build_data_loader(DataConfig(datasets=[DatasetSource(shards)], seed=0, num_workers=1), seq, 1,
                                    cfg.patch_size))
    times, images = [], []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        micro = [next(loader) for _ in range(batch)]
        train_step(solo_forward_step, [iter(micro)], chunks, opt, sched, num_microbatches=batch, seq_length=seq,
                   micro_batch_size=1)
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
            images.append(sum(int((m["tokens"] == VISION_START_ID).sum()) for m in micro))
    save_checkpoint(str(save), TrainState(iteration=steps), chunks)
    write_run_files(save, cfg, parallel, tokenizer_for_vocab(None, cfg.vocab_size), None)
    return statistics.median(times), statistics.mean(images)


def pope_file(root: Path, folder: str) -> str:
    """A POPE-style JSONL over the photos: 'Is there a NAME in the image?' for its own class (yes) and the next (no)."""
    import json

    names = json.loads((root / "raw" / "class_names.json").read_text())
    photos = sorted(Path(folder).rglob("*.jpg"))
    labels = [names.get(p.parent.name, p.parent.name) for p in photos]
    rows = []
    for k, img in enumerate(photos):
        other = labels[(k + 1) % len(labels)]
        for obj, ans in ((labels[k], "yes"), (other, "no")) if other != labels[k] else ((labels[k], "yes"),):
            rows.append({"id": f"{k}-{obj}", "image": str(img), "question": f"Is there a {obj} in the image?",
                         "answer": ans, "category": "random"})
    path = root / "pope.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def repeated(cfg, times: int) -> dict:
    """The validation-loss result of ``cfg`` with the median images/s of ``times`` evaluations."""
    from megatron_solo.evaluation.run import evaluate

    reports = [evaluate(cfg) for _ in range(times)]
    runs = [r["val_loss"]["shards"] for r in reports]
    bench = [r["benchmarks"]["pope"] for r in reports]
    return {**runs[0], "images_per_s": statistics.median(r["images_per_s"] for r in runs),
            "bench_images_per_s": statistics.median(b["images_per_s"] for b in bench),
            "bench_accuracy": bench[0]["generate"]["accuracy"]}


def main() -> None:
    """Train, evaluate both ways, print the rates and ratios."""
    from megatron_solo.config.evaluation import EvalConfig
    from megatron_solo.hf.exporter import export_checkpoint

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--seq-length", type=int, default=1024)
    ap.add_argument("--global-batch", type=int, default=2)
    ap.add_argument("--max-side", type=int, default=256)
    ap.add_argument("--eval-repeats", type=int, default=3, help="evaluations per backend (the median is shown)")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards = build_shards(root, args.max_side)
        pope = pope_file(root, str(root / "raw" / "imagenet"))
        step_s, images_per_step = train(shards, root / "ckpt", args.steps, args.seq_length, args.global_batch)
        tasks = dict(val_data=[shards], benchmark=[f"pope={pope}"], benchmark_max_new_tokens=4,
                     max_side=args.max_side, progress=False)
        mg = repeated(EvalConfig(checkpoint=str(root / "ckpt"), **tasks), args.eval_repeats)
        export = export_checkpoint(root / "ckpt", root / "export", progress=False)
        hf = repeated(EvalConfig(hf=str(export), **tasks), args.eval_repeats)
    train_rate = images_per_step / step_s
    print(f"solo-tiny, fp32, CPU ({torch.get_num_threads()} threads), {mg['images']} ImageNet photos at "
          f"<= {args.max_side} px, packs of {args.seq_length} tokens x {args.global_batch} per step")
    print(f"training:          {1 / step_s:.3f} steps/s, {train_rate:.2f} images/s ({images_per_step:.1f} "
          f"images/step, median of {args.steps} steps)")
    for name, r in (("megatron-core", mg), ("transformers", hf)):
        print(f"evaluation {name:>13}: {r['images_per_s']:.2f} images/s (val loss {r['loss']:.4f}), "
              f"{r['images_per_s'] / train_rate:.2f}x the training rate")
        print(f"benchmark  {name:>13}: {r['bench_images_per_s']:.2f} images/s (POPE-style yes/no, generated, "
              f"accuracy {r['bench_accuracy']:.3f}), {r['bench_images_per_s'] / train_rate:.2f}x the training rate")
    print(f"evaluation megatron-core / transformers: {mg['images_per_s'] / hf['images_per_s']:.2f}x; "
          f"val loss {mg['loss']!r} vs {hf['loss']!r}")


if __name__ == "__main__":
    main()
