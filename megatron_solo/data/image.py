"""SOLO's image rule: RGB conversion, aspect-preserving resize to a patch grid, normalization, patches.

Conventions (SOLO's):
- patch P = 32 pixels, longest side at most MAX = 1024 (both configurable);
- a patch is 3*P*P values flattened channel-major (channel, row-in-patch, col-in-patch);
- patches are listed row-major over the grid; the grid is (rows, cols);
- pixels are scaled to [0, 1] and normalized with the ImageNet mean/std.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps

PATCH_SIZE = 32
MAX_SIDE = 1024
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Transparent pixels are composited onto white: simply dropping alpha would expose whatever colour the
# encoder left under fully transparent pixels (often black, sometimes garbage), and logos/diagrams with
# transparent backgrounds are meant to be seen on a light page.
BACKGROUND = (255, 255, 255)


class ImageError(ValueError):
    """An image that cannot be used; `reason` is the short key counted in the preprocessing stats."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.detail = message


def resize_dims(width: int, height: int, patch: int = PATCH_SIZE, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """Target (W, H) of SOLO's resize rule: long side rounded up to P (capped at MAX), short side kept in ratio."""
    if width <= 0 or height <= 0:
        raise ImageError("empty_image", f"image has size {width}x{height}")
    if max_side < patch or max_side % patch:
        raise ValueError(f"max_side {max_side} must be a positive multiple of the patch size {patch}")
    long, short = max(width, height), min(width, height)
    new_long = min(math.ceil(long / patch) * patch, max_side)
    new_short = math.ceil(math.floor(new_long * short / long) / patch) * patch
    # The published rule yields 0 for aspect ratios beyond max_side/patch (e.g. 1x10000): keep one patch
    # so the grid is never empty. Preprocessing skips such images by default (see `check_aspect`).
    new_short = max(new_short, patch)
    return (new_long, new_short) if width >= height else (new_short, new_long)


def grid_of(width: int, height: int, patch: int = PATCH_SIZE) -> tuple[int, int]:
    """(rows, cols) of the patch grid of an image already resized to multiples of `patch`."""
    if width % patch or height % patch:
        raise ValueError(f"image {width}x{height} is not a multiple of the patch size {patch}")
    return height // patch, width // patch


def aspect_ratio(width: int, height: int) -> float:
    """Long side over short side."""
    return max(width, height) / max(1, min(width, height))


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """Scale a 16/32-bit integer or float single-channel image to 8-bit L (PIL's convert clips instead)."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        peak = float(np.nanmax(arr)) if arr.size else 0.0
        scale = 255.0 if peak <= 1.0 else 1.0  # float images are [0,1] or already [0,255]
        out = np.clip(np.nan_to_num(arr) * scale, 0, 255)
    else:
        arr = arr.astype(np.int64)
        peak = int(arr.max()) if arr.size else 0
        # 16-bit data (I;16*, and PNG 16-bit which PIL opens as mode I) spans 0..65535: divide by 257
        # so 65535 -> 255. Mode I images that only use 0..255 are 8-bit data stored wide: keep as is.
        out = np.clip(arr / 257.0, 0, 255) if peak > 255 else np.clip(arr, 0, 255)
    return Image.fromarray(np.round(out).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any PIL mode to 8-bit RGB (alpha composited onto white)."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not cost the image: keep the stored orientation
        pass
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_bit_depth_to_l(img).convert("RGB")
    if mode == "P":
        # palette images may carry transparency through a tRNS entry: go through RGBA to honour it
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("LA", "La", "PA", "RGBa", "RGBA") or (mode == "L" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "CMYK":
        # PIL's conversion is the naive 255-(C+K) formula; JPEGs written by Adobe (inverted CMYK) are
        # already un-inverted by the decoder. ICC-managed conversion would be closer but needs littlecms
        # profiles that are rarely present in web data.
        return img.convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageError("unsupported_mode", f"cannot convert PIL mode {mode} to RGB ({err})") from err


def _check_not_empty(data: bytes | str) -> None:
    """Zero-byte input gets its own reason: usually a failed download, not a corrupt encoder."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        empty = len(data) == 0
    else:
        try:
            empty = os.path.getsize(data) == 0
        except OSError as err:
            raise ImageError("missing_file", f"{data}: {err.strerror}") from err
    if empty:
        raise ImageError("empty_file", f"zero-byte image {'' if not isinstance(data, str) else data}".strip())


@contextlib.contextmanager
def _decode_errors(data: bytes | str) -> Iterator[None]:
    """Turn PIL's decoding failures into ImageError with a skip reason, naming the file when it has one."""

    def named(err: BaseException) -> str:
        # PIL's messages ("image file is truncated", "exceeds limit ...") do not say which file
        text = str(err)
        return f"{data}: {text}" if isinstance(data, str) and data not in text else text

    try:
        yield
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError("too_large", named(err)) from err
    except FileNotFoundError as err:
        raise ImageError("missing_file", named(err)) from err
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError) as err:
        raise ImageError("corrupt_image", named(err)) from err


def open_image(data: bytes | str) -> Image.Image:
    """Open encoded bytes or a path and fully decode it, raising ImageError with a reason on failure."""
    _check_not_empty(data)
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    with _decode_errors(data):
        img = Image.open(src)
        img.load()  # truncated files fail here, not later inside a worker
    return img


def load_resized(
    data: bytes | str,
    patch: int = PATCH_SIZE,
    max_side: int = MAX_SIDE,
    max_aspect: float | None = None,
    fast_jpeg: bool = False,
) -> Image.Image:
    """Decode an image (bytes or path), convert it to RGB and resize it by SOLO's rule.

    ``fast_jpeg``: let libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 scale before the bicubic resize.
    Faster on big photos, but the pixels differ from SOLO's full decode + resize (up to ~0.8 in
    normalized units on a 2268x1022 photo; benchmarks/bench_jpeg_decode.py), so it is off by default.
    """
    _check_not_empty(data)
    with _decode_errors(data):
        img = Image.open(io.BytesIO(data) if not isinstance(data, str) else data)
        if fast_jpeg and img.format == "JPEG":
            w, h = _oriented_size(img)
            target = resize_dims(w, h, patch, max_side)
            img.draft(None, target if (w, h) == img.size else (target[1], target[0]))
        img.load()
    return resize_rgb(to_rgb(img), patch, max_side, max_aspect)


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    """Size after EXIF orientation (orientations 5-8 swap width and height)."""
    w, h = img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def check_aspect(width: int, height: int, max_aspect: float | None) -> None:
    """Raise ImageError('aspect_ratio') when the image is more elongated than `max_aspect`."""
    if max_aspect is not None and aspect_ratio(width, height) > max_aspect:
        raise ImageError("aspect_ratio", f"{width}x{height} is more elongated than {max_aspect}:1")


def resize_rgb(
    img: Image.Image, patch: int = PATCH_SIZE, max_side: int = MAX_SIDE, max_aspect: float | None = None
) -> Image.Image:
    """Resize an RGB image to SOLO's grid (stretch, no padding); bicubic, with antialiasing when shrinking."""
    w, h = img.size
    check_aspect(w, h, max_aspect)
    target = resize_dims(w, h, patch, max_side)
    if target == (w, h):
        return img
    return img.resize(target, Image.Resampling.BICUBIC, reducing_gap=None)


def normalize(pixels: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float32 3xHxW scaled to [0,1] and normalized with the ImageNet mean/std."""
    if not pixels.flags.writeable or not pixels.flags.c_contiguous:
        pixels = np.array(pixels, copy=True)  # torch refuses read-only buffers (PIL's asarray is read-only)
    t = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return t.sub_(mean).div_(std)


def patchify(chw: torch.Tensor, patch: int = PATCH_SIZE) -> torch.Tensor:
    """3xHxW -> (rows*cols, 3*P*P): patches row-major, each flattened (channel, row-in-patch, col-in-patch)."""
    c, h, w = chw.shape
    rows, cols = grid_of(w, h, patch)
    x = chw.reshape(c, rows, patch, cols, patch).permute(1, 3, 0, 2, 4)
    return x.reshape(rows * cols, c * patch * patch)


def unpatchify(patches: torch.Tensor, rows: int, cols: int, patch: int = PATCH_SIZE) -> torch.Tensor:
    """Inverse of `patchify`: (rows*cols, 3*P*P) -> 3xHxW."""
    x = patches.reshape(rows, cols, 3, patch, patch).permute(2, 0, 3, 1, 4)
    return x.reshape(3, rows * patch, cols * patch)


_SCALE = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD]).view(1, 3, 1)
_BIAS = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(1, 3, 1)


def patchify_into(pixels: np.ndarray, out: torch.Tensor, patch: int = PATCH_SIZE) -> None:
    """uint8 HxWx3 -> normalized patches written into `out` (rows*cols, 3*P*P), without temporaries.

    Same values as normalize + patchify, but the patch reordering is done on uint8 (a quarter of the
    bytes) and the normalization is one fused multiply-add into the caller's buffer: this is the loader's
    hot loop, and a 32K pack carries ~350 MB of float32 patches.
    """
    h, w, _ = pixels.shape
    rows, cols = grid_of(w, h, patch)
    if out.shape != (rows * cols, 3 * patch * patch) or out.dtype != torch.float32:
        raise ValueError(f"out must be float32 ({rows * cols}, {3 * patch * patch}), got {tuple(out.shape)}")
    u8 = np.ascontiguousarray(pixels.reshape(rows, patch, cols, patch, 3).transpose(0, 2, 4, 1, 3))
    view = out.view(rows * cols, 3, patch * patch)
    torch.mul(torch.from_numpy(u8).view(rows * cols, 3, patch * patch), _SCALE, out=view)
    view.add_(_BIAS)


def image_to_patches(img: Image.Image, patch: int = PATCH_SIZE) -> tuple[torch.Tensor, tuple[int, int]]:
    """Normalized patches (N, 3*P*P) and grid (rows, cols) of an RGB image already on the patch grid."""
    rows, cols = grid_of(img.width, img.height, patch)
    pixels = np.asarray(img.convert("RGB") if img.mode != "RGB" else img)
    out = torch.empty(rows * cols, 3 * patch * patch)
    patchify_into(pixels, out, patch)
    return out, (rows, cols)


def preprocess_image(
    data: bytes | str | Image.Image, patch: int = PATCH_SIZE, max_side: int = MAX_SIDE
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Full rule on one raw image: decode, RGB, resize, normalize, patchify -> (patches, (rows, cols))."""
    img = resize_rgb(to_rgb(data), patch, max_side) if isinstance(data, Image.Image) else load_resized(
        data, patch, max_side
    )
    return image_to_patches(img, patch)


def encode_image(img: Image.Image, fmt: str = "jpeg", quality: int = 95) -> tuple[bytes, str]:
    """Compress a resized RGB image for a shard; returns (bytes, file extension)."""
    buf = io.BytesIO()
    fmt = fmt.lower()
    if fmt in ("jpeg", "jpg"):
        # 4:4:4 chroma: patches are 32x32, and 4:2:0 would halve colour resolution inside each patch
        img.save(buf, format="JPEG", quality=quality, subsampling=0, optimize=False)
        return buf.getvalue(), "jpg"
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1)
        return buf.getvalue(), "png"
    if fmt == "webp":
        img.save(buf, format="WEBP", quality=quality, method=2)
        return buf.getvalue(), "webp"
    raise ValueError(f"unknown image format {fmt!r} (jpeg, png or webp)")
