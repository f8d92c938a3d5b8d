"""Packing benchmark: fill and tokens lost at L=32768 on a SOLO-like mix; C++ vs Python speed.

Compares, on the same shuffled sample stream:
- ours: bounded best-fit (C++), over-long documents split outside images;
- SOLO's release: greedy in stream order, a pack runs past L and the overflow is cut (lost);
- first-fit (unbounded: every pack stays open), with the same splitting as ours.
Then times the C++ packer against the pure-Python reference of the same algorithm (1M samples: both,
and identical output checked) and the C++ packer alone at 10M samples.

Run: python benchmarks/bench_packing.py [--n-fill 300000] [--n-speed 1000000] [--n-big 10000000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from megatron_solo.data.image import resize_dims
from megatron_solo.data.packing import pack, pack_reference, shuffled_order
from megatron_solo.vocab import image_token_count

L = 32768


def solo_like_mix(n: int, seed: int = 0, vision_share: float = 0.33):
    """Sample lengths + image-block CSR of a stage-1-like mix: ImageNet captions and SlimPajama-like text."""
    rng = np.random.default_rng(seed)
    # ImageNet: median ~500x375 with a spread of sizes and the usual aspect ratios; caption = class name
    img_tokens_mean = 260.0
    text_mean = 1400.0
    # solve for the image fraction of samples that gives the wanted vision token share
    frac = vision_share * text_mean / (img_tokens_mean * (1 - vision_share) + vision_share * text_mean)
    n_img = int(n * frac)
    n_txt = n - n_img
    long = np.clip(rng.lognormal(np.log(500), 0.35, n_img), 64, 5000)
    ratio = rng.choice([4 / 3, 3 / 2, 1.0, 5 / 4, 16 / 9], n_img, p=[0.5, 0.2, 0.15, 0.1, 0.05])
    short = long / ratio
    grids = [resize_dims(int(a), int(b)) for a, b in zip(long[:5000], short[:5000])]  # exact rule on a subset
    table = np.array([image_token_count(h // 32, w // 32) for w, h in grids])
    block = table[rng.integers(0, len(table), n_img)]
    caption = rng.integers(3, 12, n_img) + 2  # class name + <s> </s>
    img_len = block + caption
    # SlimPajama-like: heavy-tailed document lengths (median ~600 tokens, some far beyond 32K)
    txt_len = np.clip(rng.lognormal(np.log(600), 1.3, n_txt), 16, 400_000).astype(np.int64)
    lengths = np.concatenate([img_len, txt_len]).astype(np.int64)
    counts = np.concatenate([np.ones(n_img, np.int64), np.zeros(n_txt, np.int64)])
    block_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    block_start = np.ones(n_img, np.int64)  # after <s>
    block_end = block_start + block
    return lengths, block_ptr, block_start, block_end


def solo_greedy(lengths: np.ndarray, order: np.ndarray) -> dict:
    """The release's packer: add documents in stream order until a pack reaches L; cut what runs past."""
    packs = lost = 0
    cur = 0
    for length in lengths[order].tolist():
        cur += length
        if cur >= L:
            lost += cur - L
            packs += 1
            cur = 0
    kept = int(lengths.sum()) - lost
    if cur:
        packs += 1
    return {"packs": packs, "fill": kept / (packs * L), "lost": lost}


def first_fit(lengths, block_ptr, block_start, block_end, order) -> dict:
    """Unbounded first-fit over the same pieces as ours (over-long documents split the same way)."""
    from megatron_solo.data.packing import split_points_reference

    room = np.zeros(1024, np.int64)
    n_bins = 0
    for s in order.tolist():
        length = int(lengths[s])
        if length > L:
            blocks = list(zip(block_start[block_ptr[s]:block_ptr[s + 1]].tolist(),
                              block_end[block_ptr[s]:block_ptr[s + 1]].tolist()))
            pieces = [b - a for a, b in split_points_reference(length, L, blocks)]
        else:
            pieces = [length]
        for size in pieces:
            fits = np.flatnonzero(room[:n_bins] >= size)
            if len(fits):
                room[fits[0]] -= size
            else:
                if n_bins == len(room):
                    room = np.concatenate([room, np.zeros(len(room), np.int64)])
                room[n_bins] = L - size
                n_bins += 1
    used = n_bins * L - int(room[:n_bins].sum())
    return {"packs": n_bins, "fill": used / (n_bins * L), "lost": 0}


def main() -> None:
    """Run the comparisons and print a table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-fill", type=int, default=300_000)
    p.add_argument("--n-firstfit", type=int, default=100_000)
    p.add_argument("--n-speed", type=int, default=1_000_000)
    p.add_argument("--n-big", type=int, default=10_000_000)
    a = p.parse_args()

    lengths, bp, bs, be = solo_like_mix(a.n_fill)
    vision = int((be - bs).sum())
    print(f"mix: {a.n_fill} samples, {lengths.sum() / 1e6:.1f}M tokens, vision share {vision / lengths.sum():.1%}, "
          f"{(lengths > L).sum()} docs longer than L={L}")
    order = shuffled_order(len(lengths), 1, 0)
    t = time.perf_counter()
    ours = pack(lengths, L, seed=1, epoch=0, block_ptr=bp, block_start=bs, block_end=be)
    t_ours = time.perf_counter() - t
    solo = solo_greedy(lengths, order)
    print(f"{'packer':<28}{'packs':>9}{'fill':>10}{'tokens lost':>14}")
    print(f"{'ours (best-fit, C++)':<28}{ours.num_packs:>9}{ours.fill():>10.3%}{ours.dropped_tokens:>14}"
          f"   ({t_ours:.2f}s, {ours.num_split} docs split)")
    print(f"{'SOLO greedy stream':<28}{solo['packs']:>9}{solo['fill']:>10.3%}{solo['lost']:>14}"
          f"   ({solo['lost'] / lengths.sum():.2%} of tokens cut)")
    n_ff = min(a.n_firstfit, a.n_fill)
    sub = np.sort(order[:n_ff])
    sl, sbp, sbs, sbe = _subset(lengths, bp, bs, be, sub)
    sub_order = shuffled_order(n_ff, 1, 0)
    ff = first_fit(sl, sbp, sbs, sbe, sub_order)
    ours_sub = pack(sl, L, seed=1, epoch=0, block_ptr=sbp, block_start=sbs, block_end=sbe)
    solo_sub = solo_greedy(sl, sub_order)
    print(f"-- on a {n_ff}-sample subset (first-fit is O(n x packs)):")
    print(f"{'ours':<28}{ours_sub.num_packs:>9}{ours_sub.fill():>10.3%}{0:>14}")
    print(f"{'first-fit (unbounded)':<28}{ff['packs']:>9}{ff['fill']:>10.3%}{ff['lost']:>14}")
    print(f"{'SOLO greedy stream':<28}{solo_sub['packs']:>9}{solo_sub['fill']:>10.3%}{solo_sub['lost']:>14}")

    lengths, bp, bs, be = solo_like_mix(a.n_speed, seed=1)
    fast, t_cpp = _best_of(5, lambda: pack(lengths, L, 7, 0, bp, bs, be))
    ref, t_py = _best_of(2, lambda: pack_reference(lengths, L, 7, 0, bp, bs, be))
    same = all(np.array_equal(getattr(fast, k), getattr(ref, k))
               for k in ("pack_ptr", "item_sample", "item_start", "item_end", "dropped"))
    print(f"speed at {a.n_speed} samples (best of runs): C++ {t_cpp:.3f}s, Python {t_py:.2f}s -> {t_py / t_cpp:.0f}x "
          f"(identical output: {same})")
    big, bbp, bbs, bbe = solo_like_mix(a.n_big, seed=2)
    res, t_big = _best_of(3, lambda: pack(big, L, 7, 0, bbp, bbs, bbe))
    print(f"C++ at {a.n_big} samples: {t_big:.2f}s ({res.num_packs} packs, fill {res.fill():.3%})")


def _best_of(n: int, fn):
    """(result, best wall time) of n runs."""
    best, out = float("inf"), None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def _subset(lengths, bp, bs, be, idx):
    counts = bp[idx + 1] - bp[idx]
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    src = np.concatenate([np.arange(bp[i], bp[i + 1]) for i in idx]) if ptr[-1] else np.zeros(0, np.int64)
    return lengths[idx], ptr, bs[src], be[src]


if __name__ == "__main__":
    main()
