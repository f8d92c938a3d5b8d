"""SOLO image rule: resize, mode conversion, normalization, patch layout, bad images."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from megatron_solo.data import image as im
from tests.harness.paths import TOOLS


@pytest.mark.parametrize(
    "size, expected",
    [
        ((2268, 1022), (1024, 480)),  # the reference example: 32 cols x 15 rows
        ((1022, 2268), (480, 1024)),
        ((10, 7), (32, 32)),  # tiny images are scaled up to one patch
        ((100, 50), (128, 64)),
        ((1024, 1024), (1024, 1024)),
        ((4000, 3000), (1024, 768)),
        ((1, 10000), (32, 1024)),  # never a zero-width grid
        ((10000, 1), (1024, 32)),
    ],
)
def test_resize_dims(size, expected):
    assert im.resize_dims(*size) == expected


def test_resize_configurable_max_side():
    assert im.resize_dims(2268, 1022, max_side=512) == (512, 256)
    with pytest.raises(ValueError):
        im.resize_dims(10, 10, max_side=500)


def _encode(img, fmt="PNG", **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_real_image_grid_and_patches():
    astro = Image.fromarray(skdata.astronaut())  # 512x512 RGB
    patches, grid = im.preprocess_image(_encode(astro))
    assert grid == (16, 16) and patches.shape == (256, 3072) and patches.dtype == torch.float32
    coffee = Image.fromarray(skdata.coffee())  # 600x400
    img = im.load_resized(_encode(coffee))
    assert img.size == (608, 416)


def test_patch_layout_channel_major_row_major():
    rows, cols, p = 2, 3, 32
    px = np.random.default_rng(0).integers(0, 256, (rows * p, cols * p, 3), dtype=np.uint8)
    patches, grid = im.image_to_patches(Image.fromarray(px))
    assert grid == (rows, cols)
    chw = im.normalize(px)
    for r in range(rows):
        for c in range(cols):
            block = chw[:, r * p : (r + 1) * p, c * p : (c + 1) * p]  # (channel, row, col)
            assert torch.allclose(patches[r * cols + c], block.reshape(-1), atol=1e-6)
    assert torch.allclose(im.unpatchify(patches, rows, cols), chw, atol=1e-6)
    assert torch.equal(im.unpatchify(im.patchify(chw), rows, cols), chw)


def test_normalization_values():
    px = np.zeros((32, 32, 3), np.uint8)
    px[..., 0] = 255
    patches, _ = im.image_to_patches(Image.fromarray(px))
    red = patches[0, :1024]
    green = patches[0, 1024:2048]
    assert torch.allclose(red, torch.full_like(red, (1 - 0.485) / 0.229))
    assert torch.allclose(green, torch.full_like(green, (0 - 0.456) / 0.224))


def test_modes_convert_to_rgb():
    gray = Image.fromarray(skdata.camera())  # L
    assert im.to_rgb(gray).mode == "RGB"
    la = Image.new("LA", (4, 4), (0, 0))  # fully transparent black -> white
    assert im.to_rgb(la).getpixel((0, 0)) == (255, 255, 255)
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 128))  # half red over white
    r, g, b = im.to_rgb(rgba).getpixel((0, 0))
    assert r == 255 and 120 < g < 135 and g == b
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.info["transparency"] = 0
    assert im.to_rgb(pal).getpixel((0, 0)) == (255, 255, 255)
    pal2 = Image.open(io.BytesIO(_encode(pal)))  # transparency survives a PNG round trip
    assert im.to_rgb(pal2).getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    assert im.to_rgb(cmyk).getpixel((0, 0)) == (255, 0, 0)
    assert im.load_resized(_encode(cmyk, "JPEG")).mode == "RGB"
    one_bit = Image.new("1", (4, 4), 1)
    assert im.to_rgb(one_bit).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_scaled_not_clipped():
    arr = np.full((8, 8), 65535, np.uint16)
    arr[0, 0] = 32896  # 128 * 257
    img16 = Image.fromarray(arr)  # I;16
    assert img16.mode.startswith("I;16")
    rgb = im.to_rgb(img16)
    assert rgb.getpixel((1, 1)) == (255, 255, 255) and rgb.getpixel((0, 0)) == (128, 128, 128)
    reopened = Image.open(io.BytesIO(_encode(img16)))  # 16-bit PNG opens as mode I or I;16
    assert im.to_rgb(reopened).getpixel((0, 0)) == (128, 128, 128)
    assert im.load_resized(_encode(img16)).size == (32, 32)


def test_exif_orientation_applied():
    img = Image.new("RGB", (64, 32), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = _encode(img, "JPEG", exif=exif.tobytes())
    out = im.load_resized(data)
    assert out.size == (32, 64)


@pytest.mark.parametrize("blob, reason", [(b"", "empty_file"), (b"not an image at all", "corrupt_image")])
def test_bad_bytes(blob, reason):
    with pytest.raises(im.ImageError) as err:
        im.load_resized(blob)
    assert err.value.reason == reason


def test_truncated_image():
    data = _encode(Image.fromarray(skdata.astronaut()), "PNG")
    with pytest.raises(im.ImageError) as err:
        im.load_resized(data[: len(data) // 2])
    assert err.value.reason == "corrupt_image"
    jpg = _encode(Image.fromarray(skdata.astronaut()), "JPEG")
    with pytest.raises(im.ImageError):
        im.load_resized(jpg[: len(jpg) // 3])


def test_extreme_aspect():
    thin = _encode(Image.new("RGB", (1, 10000), (9, 9, 9)))
    assert im.load_resized(thin).size == (32, 1024)
    with pytest.raises(im.ImageError) as err:
        im.load_resized(thin, max_aspect=32)
    assert err.value.reason == "aspect_ratio"
    wide = _encode(Image.new("RGB", (10000, 1), (9, 9, 9)))
    assert im.load_resized(wide).size == (1024, 32)


def test_encode_formats_roundtrip():
    img = im.load_resized(_encode(Image.fromarray(skdata.astronaut())))
    for fmt in ("jpeg", "png", "webp"):
        blob, ext = im.encode_image(img, fmt)
        back = Image.open(io.BytesIO(blob))
        assert back.size == img.size and ext in ("jpg", "png", "webp")
    png, _ = im.encode_image(img, "png")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(img))


def _big_jpeg(size=(2268, 1022)) -> bytes:
    """A real photo at the reference example's size, as a camera would store it."""
    photo = Image.fromarray(skdata.chelsea()).resize(size, Image.Resampling.BICUBIC)
    return _encode(photo, "JPEG", quality=92)


def test_jpeg_default_is_full_decode_then_resize():
    blob = _big_jpeg()
    full = Image.open(io.BytesIO(blob))
    full.load()
    assert full.size == (2268, 1022)  # no reduced-scale decode in the reference
    reference = full.convert("RGB").resize((1024, 480), Image.Resampling.BICUBIC, reducing_gap=None)
    exact = im.load_resized(blob)
    assert exact.size == (1024, 480) and np.array_equal(np.asarray(exact), np.asarray(reference))
    fast = im.load_resized(blob, fast_jpeg=True)  # libjpeg's 1/2-scale decode: close, not equal
    assert fast.size == exact.size
    ref_patches, fast_patches = im.image_to_patches(reference)[0], im.image_to_patches(fast)[0]
    gap = (ref_patches - fast_patches).abs().max().item()
    assert 0 < gap < 2.0


def test_fast_jpeg_decode_flag_reaches_the_config(tmp_path):
    import json
    import subprocess
    import sys

    src = tmp_path / "t.jsonl"
    src.write_text(json.dumps({"text": "hello"}) + "\n")
    tool = TOOLS / "preprocess_data.py"
    for flag, expected in (([], False), (["--fast-jpeg-decode"], True)):
        out = tmp_path / f"o{int(expected)}"
        subprocess.run([sys.executable, str(tool), "--kind", "text", "--input", str(src), "--output", str(out),
                        "--workers", "0", "--quiet", *flag], check=True, capture_output=True)
        assert json.loads((out / "preprocess_config.json").read_text())["fast_jpeg_decode"] is expected
