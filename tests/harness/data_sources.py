"""Builders of small raw sources for the data tests (real skimage/sklearn images plus generated bad ones)."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def real_images() -> dict[str, Image.Image]:
    """A few real photos of different sizes and modes."""
    from sklearn.datasets import load_digits

    digit = Image.fromarray((load_digits().images[0] * 16).astype(np.uint8))  # 8x8 L
    return {
        "astronaut": Image.fromarray(skdata.astronaut()),  # 512x512 RGB
        "coffee": Image.fromarray(skdata.coffee()),  # 600x400 RGB
        "chelsea": Image.fromarray(skdata.chelsea()),  # 451x300 RGB
        "camera": Image.fromarray(skdata.camera()),  # 512x512 L
        "digit": digit,
    }


def bad_image_files(folder: Path) -> dict[str, str]:
    """Bad and awkward image files -> the skip reason expected (None: must be accepted)."""
    folder.mkdir(parents=True, exist_ok=True)
    astro = encode(Image.fromarray(skdata.astronaut()), "JPEG")
    (folder / "zero.png").write_bytes(b"")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (folder / "truncated.jpg").write_bytes(astro[: len(astro) // 3])
    (folder / "tall.png").write_bytes(encode(Image.new("RGB", (1, 10000), (200, 10, 10))))
    (folder / "wide.png").write_bytes(encode(Image.new("RGB", (10000, 1), (10, 200, 10))))
    (folder / "sixteen.png").write_bytes(encode(Image.fromarray(np.full((40, 70), 40000, np.uint16))))
    (folder / "cmyk.jpg").write_bytes(encode(Image.new("CMYK", (50, 40), (0, 200, 200, 0)), "JPEG"))
    rgba = Image.new("RGBA", (40, 40), (0, 0, 255, 0))
    (folder / "rgba.png").write_bytes(encode(rgba))
    return {"zero.png": "empty_file", "corrupt.png": "corrupt_image", "truncated.jpg": "corrupt_image",
            "tall.png": "aspect_ratio", "wide.png": "aspect_ratio", "sixteen.png": None, "cmyk.jpg": None,
            "rgba.png": None}


def classification_folder(root: Path) -> tuple[Path, Path]:
    """Class folders (one with bad images) and a class-name map missing one class."""
    imgs = real_images()
    (root / "n001").mkdir(parents=True)
    (root / "n002").mkdir()
    (root / "n003").mkdir()
    for name in ("astronaut", "coffee"):
        (root / "n001" / f"{name}.jpg").write_bytes(encode(imgs[name], "JPEG", quality=90))
    for name in ("chelsea", "camera", "digit"):
        (root / "n002" / f"{name}.png").write_bytes(encode(imgs[name]))
    bad_image_files(root / "n003")
    names = root.parent / "classes.json"
    names.write_text(json.dumps({"n001": "astronaut or coffee", "n003": "oddities"}))  # n002 missing
    return root, names


def caption_tar(path: Path, n: int = 6, truncate: bool = False) -> Path:
    """An img2dataset-style tar: K.jpg + K.txt + K.json; sample 2 has an empty caption."""
    imgs = list(real_images().values())
    with tarfile.open(path, "w") as tf:
        for i in range(n):
            key = f"{i:09d}"
            caption = "" if i == 2 else f"caption number {i}"
            for ext, blob in (("jpg", encode(imgs[i % len(imgs)].convert("RGB"), "JPEG")),
                              ("txt", caption.encode()), ("json", json.dumps({"caption": caption}).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(blob)
                tf.addfile(info, io.BytesIO(blob))
    if truncate:
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) * 2 // 3])
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def image_bytes() -> list[bytes]:
    """The real photos as JPEG bytes (RGB), in real_images() order."""
    return [encode(img.convert("RGB"), "JPEG", quality=90) for img in real_images().values()]


CORRUPT_JPEG = b"\xff\xd8\xff\xe0" + b"\x00not a jpeg" * 30


def write_parquet(path: Path, rows: list[dict], row_group_size: int) -> Path:
    """Rows as a parquet file cut into row groups of ``row_group_size`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def caption_rows() -> list[dict]:
    """Six caption rows with image bytes (the datasets Image struct); row 3 a corrupt image, row 4 a null text."""
    blobs = image_bytes()
    rows = [{"image": {"bytes": blobs[i % len(blobs)], "path": f"{i}.jpg"}, "caption": f"photo number {i}"}
            for i in range(6)]
    rows[3]["image"] = {"bytes": CORRUPT_JPEG, "path": "3.jpg"}
    rows[4]["caption"] = None
    return rows


def webdataset_folder(folder: Path, shards: int = 2, per_shard: int = 3, vqa: bool = False) -> list[dict]:
    """Webdataset shards of real photos with unique keys (as `energon prepare` needs); returns the samples.

    Captioning: K.jpg + K.txt; VQA (``vqa``): K.jpg + K.json {"question", "answer"}.
    """
    folder.mkdir(parents=True, exist_ok=True)
    blobs, samples = image_bytes(), []
    for s in range(shards):
        with tarfile.open(folder / f"part-{s:03d}.tar", "w") as tf:
            for i in range(per_shard):
                key, n = f"s{s}i{i}", s * per_shard + i
                sample = {"key": key, "image": blobs[n % len(blobs)]}
                if vqa:
                    sample.update(question=f"What is in photo {n}?", answer=f"Photo {n}.")
                    members = {"json": json.dumps({"question": sample["question"], "answer": sample["answer"]})}
                else:
                    sample["caption"] = f"a caption for photo {n}"
                    members = {"txt": sample["caption"]}
                members = {"jpg": sample["image"], **{k: v.encode() for k, v in members.items()}}
                for ext, blob in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(blob)
                    tf.addfile(info, io.BytesIO(blob))
                samples.append(sample)
    return samples
