"""JPEG decode benchmark: SOLO's exact decode (full decode + bicubic resize) vs libjpeg's draft decode.

`load_resized(..., fast_jpeg=True)` (preprocessing's `--fast-jpeg-decode`) lets libjpeg decode a big JPEG at
1/2, 1/4 or 1/8 scale before the bicubic resize; the default decodes every pixel, as SOLO does. For each
photo and target size this prints the time of both paths, their ratio, and how far the fast path's
patches are from the exact ones in ImageNet-normalized units (max and mean absolute difference).

Photos: scikit-image's real photos (retina 1411x1411 and Hubble 1000x872 as stored; astronaut and
chelsea scaled to camera sizes — note that upscaled photos are smoother than camera output, so their
differences understate what sharp photos show), re-encoded as JPEG at quality 92, 4:2:0 like a camera.

Run: python benchmarks/bench_jpeg_decode.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

from PIL import Image
from skimage import data as skdata

from megatron_solo.data.image import image_to_patches, load_resized


def photos() -> list[tuple[str, bytes]]:
    """(name, JPEG bytes) of real photos at realistic camera sizes."""
    out = []
    folder = Path(skdata.__file__).parent
    for stored in ("retina.jpg", "hubble_deep_field.jpg"):
        if (folder / stored).exists():
            blob = (folder / stored).read_bytes()
            w, h = Image.open(io.BytesIO(blob)).size
            out.append((f"{stored} {w}x{h}", blob))
    for name, size in (("chelsea", (2268, 1022)), ("astronaut", (2268, 1022)), ("astronaut", (4032, 3024)),
                       ("chelsea", (6000, 4000))):
        img = Image.fromarray(getattr(skdata, name)()).resize(size, Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=92)
        out.append((f"{name} {size[0]}x{size[1]}", buf.getvalue()))
    return out


def timed(repeat: int, blob: bytes, max_side: int, fast: bool) -> tuple[float, Image.Image]:
    """Best wall time of `repeat` decodes + resizes (seconds) and the resized image."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = load_resized(blob, max_side=max_side, fast_jpeg=fast)
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    """Time both decode paths on every photo and target, print speed ratio and patch difference."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--max-side", type=int, nargs="+", default=[1024, 512])
    a = p.parse_args()
    print(f"{'photo':<30} {'max_side':>8} {'grid':>7} {'exact ms':>9} {'fast ms':>8} {'speed-up':>8} "
          f"{'max diff':>9} {'mean diff':>9}")
    for name, blob in photos():
        for max_side in a.max_side:
            t_exact, exact = timed(a.repeat, blob, max_side, fast=False)
            t_fast, fast = timed(a.repeat, blob, max_side, fast=True)
            pe, grid = image_to_patches(exact)
            pf, _ = image_to_patches(fast)
            diff = (pe - pf).abs()
            print(f"{name:<30} {max_side:>8} {grid[0]:>3}x{grid[1]:<3} {t_exact * 1e3:>9.1f} {t_fast * 1e3:>8.1f} "
                  f"{t_exact / t_fast:>7.2f}x {diff.max().item():>9.3f} {diff.mean().item():>9.4f}")
    print("diff: |exact - fast| of normalized patch values ((x/255 - mean) / std); 1/255 of a pixel ~ 0.017")


if __name__ == "__main__":
    main()
