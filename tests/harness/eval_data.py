"""Real-image evaluation inputs for the evaluation tests and benchmark (skimage's sample photos).

Each class is one skimage photo (its docstring's first line says what it shows), plus a mirrored
and a cropped copy, so every class has several held-out images. Also: a text source, a class-name
file, a multiple-choice JSONL whose answers use every accepted form, and images to caption.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# skimage.data function -> class name (its docstring: astronaut Eileen Collins, coffee cup, Chelsea the
# cat, launch photo of DSCOVR on Falcon 9)
CLASSES = {"astronaut": "astronaut", "coffee": "coffee cup", "chelsea": "cat", "rocket": "rocket"}
TEMPLATE = "a photo of a {}."
MAX_SIDE = 96
TEXTS = [
    "Eileen Collins was the first woman to pilot and to command a Space Shuttle.",
    "A cup of coffee on a saucer, seen from above, with a spoon beside it.",
    "Chelsea the cat rests on a blanket and looks straight at the camera.",
    "The Falcon 9 rocket lifted off from Cape Canaveral carrying the DSCOVR satellite to its orbit "
    "a million miles from Earth, where it watches the sun and the whole sunlit face of the planet.",
]


def photo(name: str) -> Image.Image:
    """One skimage sample photo as an RGB PIL image."""
    import skimage.data

    return Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")


def variants(img: Image.Image) -> list[Image.Image]:
    """The photo, mirrored, and its central crop."""
    w, h = img.size
    return [img, img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), img.crop((w // 6, h // 6, w - w // 6, h - h // 6))]


def write_raw(root: Path) -> dict[str, Path]:
    """Class folders (labels 0..3), class names, texts, MCQ JSONL and caption images under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    classes = root / "classes"
    for label, name in enumerate(CLASSES):
        folder = classes / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        for k, img in enumerate(variants(photo(name))):
            img.save(folder / f"{name}_{k}.png")
    names = root / "class_names.json"
    names.write_text(json.dumps(list(CLASSES.values())))
    text = root / "text.jsonl"
    text.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    options = [f"a {n}" if n != "astronaut" else "an astronaut" for n in CLASSES.values()]
    # every accepted answer form: a letter, an index, the option's text, a letter with a period
    answers = ["A", 1, "a cat", "D."]
    mcq = root / "mcq.jsonl"
    rows = [{"id": f"q{k}", "image": f"classes/{k}/{name}_0.png", "question": "What is shown in the image?",
             "options": options, "answer": answers[k]} for k, name in enumerate(CLASSES)]
    rows.append({"id": "q4", "image": None, "question": "Which of these is a drink?",
                 "options": {"A": "coffee", "B": "a rocket"}, "answer": "coffee"})
    mcq.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"classes": classes, "class_names": names, "text": text, "mcq": mcq,
            "captions": [classes / "0" / "astronaut_0.png", classes / "2" / "chelsea_0.png"]}


def build(root: Path) -> dict:
    """Raw inputs plus classification and text shards (the held-out sets the tests evaluate)."""
    from megatron_solo.config.data import PreprocessConfig
    from megatron_solo.data.preprocess import preprocess

    raw = write_raw(root / "raw")
    images, texts = root / "shards" / "photos", root / "shards" / "text"
    preprocess(PreprocessConfig(kind="classification", inputs=[str(raw["classes"])], output=str(images),
                                class_names=str(raw["class_names"]), caption_template=TEMPLATE,
                                max_side=MAX_SIDE, workers=0, shard_size=5), progress=False)
    preprocess(PreprocessConfig(kind="text", inputs=[str(raw["text"])], output=str(texts), workers=0),
               progress=False)
    return {**raw, "images": images, "texts": texts}
