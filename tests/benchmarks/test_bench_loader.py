"""benchmarks/bench_loader.py: its photos are the sizes it claims, it counts the images and vision tokens
the packs hold, and its workers-per-GPU figure is the stated model."""

from __future__ import annotations

import importlib.util

import pytest
from PIL import Image

from megatron_solo.data.image import resize_dims
from tests.harness.paths import REPO


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_loader", REPO / "benchmarks" / "bench_loader.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_workers_per_gpu_charges_each_share_at_its_own_rate(bench):
    # half the GPU's 10,600 tokens/s in images at 10,000 vision tokens/s per worker, half text at 100,000
    assert bench.workers_per_gpu(0.5, 10_000, 100_000, 10_600) == pytest.approx(0.53 + 0.053)
    assert bench.workers_per_gpu(0.5, 20_000, 200_000, 10_600) == pytest.approx((0.53 + 0.053) / 2)
    assert bench.workers_per_gpu(0.0, 1.0, 10_600, 10_600) == pytest.approx(1.0)  # text only: no image cost


def test_photos_sizes_and_the_loader_counts(bench, tmp_path):
    rows = bench.make_raw(tmp_path / "raw", 5, "1024")
    sizes = [Image.open(p).size for p, _ in rows]
    assert all(1024 <= max(s) <= 1600 for s in sizes), sizes
    assert all(max(resize_dims(*s)) == 1024 for s in sizes), sizes  # stored at SOLO's max side
    imagenet = [Image.open(p).size for p, _ in bench.make_raw(tmp_path / "small", 5, "imagenet")]
    assert all(300 <= max(s) <= 900 for s in imagenet), imagenet
    shards, stats, _ = bench.run_preprocess(rows, tmp_path)
    assert stats["images"] == 5
    counts = bench.bench_loader(shards, 8192)
    # an image block: <vision>, rows of <vpatch> with a <vrow_sep> between rows, </vision>
    grids = [(w // 32, h // 32) for w, h in (resize_dims(*s) for s in sizes)]
    assert counts["images"] == 5 and counts["patches"] == sum(c * r for c, r in grids)
    assert counts["vision_tokens"] == sum(c * r + r - 1 + 2 for c, r in grids)
