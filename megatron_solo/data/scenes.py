"""Generated scenes: coloured shapes on a 2x2 grid, drawn with PIL from a seed, and text about them.

Each scene is a 64x64 image whose four 32x32 cells (one SOLO patch each) hold either nothing or one
shape (circle, square, triangle) in one of six colours, with its size and place in the cell jittered.
From the scenes come, as raw sources the preprocessor reads:
- ``captions.jsonl`` (caption kind): "two shapes: a red circle at the top left and ...";
- ``vqa.jsonl`` (caption kind): VQA-style documents, "Question: ... Answer: ..." lines about the image;
- ``conversations.jsonl`` (conversation kind): SOLO's [INST] turns, open and multiple-choice questions;
- about *held-out* scenes (drawn from another seed, none laid out like a training scene):
  ``mcq.jsonl`` (tools/evaluate.py --mcq) and ``short_answer.jsonl`` ({"image", "question", "answer"}:
  tools/evaluate.py --benchmark vqa=...).
With ``blank=True`` every image is the empty background and the text is unchanged: the data of a
baseline that never sees what it is asked about. :func:`blank_images` does the same to an image folder.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from megatron_solo.errors import UserInputError

CELL = 32  # pixels of one grid cell: one SOLO patch
SIDE = 2 * CELL
BACKGROUND = (245, 245, 245)
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 40),
           "purple": (140, 60, 190), "orange": (240, 130, 30)}
SHAPES = ("circle", "square", "triangle")
PLACES = ("top left", "top right", "bottom left", "bottom right")  # cells in reading order
COUNTS = ("one", "two", "three", "four")
# LLaVA's short-answer instruction, as tools/evaluate.py --benchmark vqa=... prompts (a test keeps them equal)
SHORT_ANSWER_INSTRUCTION = "\nAnswer the question using a single word or phrase."
TRAIN_SEED, HELDOUT_SEED = 0, 1  # the two streams of scenes never share a layout (see write_scenes)


@dataclass(frozen=True)
class Shape:
    """One object: its kind, colour, the cell it is in, and where in the cell it is drawn."""

    shape: str
    colour: str
    place: str
    size: int  # side of its bounding box, pixels
    dx: int  # offset of the box inside the cell
    dy: int


@dataclass(frozen=True)
class Scene:
    """The shapes of one image, in reading order of their cells."""

    shapes: tuple[Shape, ...]

    def layout(self) -> tuple:
        """What a question can ask about (shape, colour and place of each object), without the jitter."""
        return tuple((s.shape, s.colour, s.place) for s in self.shapes)


def draw_scene(rng: random.Random) -> Scene:
    """A scene with 1-4 objects (count uniform), each in its own cell, kind and colour uniform."""
    count = rng.randint(1, len(PLACES))
    places = sorted(rng.sample(range(len(PLACES)), count))
    shapes = []
    for p in places:
        size = rng.randint(18, 28)
        shapes.append(Shape(rng.choice(SHAPES), rng.choice(sorted(COLOURS)), PLACES[p], size,
                            rng.randint(1, CELL - 1 - size), rng.randint(1, CELL - 1 - size)))
    return Scene(tuple(shapes))


def render(scene: Scene, blank: bool = False) -> Image.Image:
    """The 64x64 RGB picture of a scene (only the background when ``blank``)."""
    img = Image.new("RGB", (SIDE, SIDE), BACKGROUND)
    if blank:
        return img
    pen = ImageDraw.Draw(img)
    for s in scene.shapes:
        cell = PLACES.index(s.place)
        x0, y0 = (cell % 2) * CELL + s.dx, (cell // 2) * CELL + s.dy
        x1, y1 = x0 + s.size - 1, y0 + s.size - 1
        fill = COLOURS[s.colour]
        if s.shape == "circle":
            pen.ellipse((x0, y0, x1, y1), fill=fill)
        elif s.shape == "square":
            pen.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            pen.polygon(((x0 + x1) / 2, y0, x1, y1, x0, y1), fill=fill)
    return img


def caption(scene: Scene) -> str:
    """A full description: the count, then every object with its place."""
    n = len(scene.shapes)
    parts = [f"{'an' if s.colour[0] in 'aeiou' else 'a'} {s.colour} {s.shape} at the {s.place}" for s in scene.shapes]
    listed = parts[0] if n == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{COUNTS[n - 1]} shape{'s' if n > 1 else ''}: {listed}."


def questions(scene: Scene, rng: random.Random) -> list[tuple[str, str, list[str]]]:
    """(question, short answer, the answers it could be confused with) about one scene, in a shuffled order."""
    out = [("How many shapes are there?", COUNTS[len(scene.shapes) - 1], list(COUNTS))]
    for s in scene.shapes:
        out.append((f"What colour is the shape at the {s.place}?", s.colour, sorted(COLOURS)))
        out.append((f"What shape is at the {s.place}?", s.shape, list(SHAPES)))
    unique = [s for s in scene.shapes if sum(t.colour == s.colour for t in scene.shapes) == 1]
    for s in unique:
        out.append((f"Where is the {s.colour} shape?", s.place, list(PLACES)))
    rng.shuffle(out)
    return out


def choices(answer: str, pool: list[str], rng: random.Random, k: int = 4) -> list[str]:
    """Up to ``k`` options in a random order: the answer and distractors drawn from ``pool``."""
    others = rng.sample([p for p in pool if p != answer], min(k, len(pool)) - 1)
    options = [answer, *others]
    rng.shuffle(options)
    return options


def mcq_text(question: str, options: list[str]) -> str:
    """A multiple-choice prompt as tools/evaluate.py writes it under the chat template (evaluation/mcq.py)."""
    return "\n".join([question, *(f"{chr(65 + k)}. {o}" for k, o in enumerate(options))])


def _scenes(seed: int, count: int, exclude: set[tuple] = frozenset()) -> list[Scene]:
    """``count`` scenes from ``seed``, skipping any whose layout is in ``exclude``."""
    rng, out = random.Random(seed), []
    while len(out) < count:
        scene = draw_scene(rng)
        if scene.layout() not in exclude:
            out.append(scene)
    return out


def _write_images(scenes: list[Scene], folder: Path, prefix: str, blank: bool) -> list[str]:
    """PNG files of the scenes; their paths relative to the folder's parent (where the JSONL files live)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, scene in enumerate(scenes):
        name = f"{prefix}_{i:05d}.png"
        render(scene, blank).save(folder / name)
        names.append(f"{folder.name}/{name}")
    return names


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _vqa_document(scene: Scene, rng: random.Random) -> str:
    return " ".join(f"Question: {q} Answer: {a}." for q, a, _ in questions(scene, rng))


def _conversation(scene: Scene, rng: random.Random) -> list[dict]:
    """Two turns: each a short-answer question or (half the time) a multiple choice, answered in words."""
    turns = []
    for q, a, pool in questions(scene, rng)[:2]:
        prompt = mcq_text(q, choices(a, pool, rng)) if rng.random() < 0.5 else q + SHORT_ANSWER_INSTRUCTION
        turns += [{"from": "human", "value": ("<image>\n" if not turns else "") + prompt}, {"from": "gpt", "value": a}]
    return turns


def _heldout_items(scenes: list[Scene], images: list[str], rng: random.Random) -> tuple[list[dict], list[dict]]:
    """One multiple-choice and one short-answer question per held-out scene (different questions)."""
    mcq, short = [], []
    for i, (scene, image) in enumerate(zip(scenes, images)):
        (q1, a1, pool1), (q2, a2, _) = questions(scene, rng)[:2]
        options = choices(a1, pool1, rng)
        mcq.append({"id": f"scene{i}", "image": image, "question": q1, "options": options,
                    "answer": chr(65 + options.index(a1))})
        short.append({"id": f"scene{i}", "image": image, "question": q2, "answer": a2})
    return mcq, short


def write_scenes(out_dir: str | Path, count: int, heldout: int = 200, blank: bool = False) -> dict[str, str]:
    """Write ``count`` training scenes and ``heldout`` held-out ones with their sources under OUT/scenes/."""
    if count < 1 or heldout < 1:
        raise UserInputError(f"scenes: count ({count}) and heldout ({heldout}) must be at least 1")
    root = Path(out_dir) / "scenes"
    train = _scenes(TRAIN_SEED, count)
    held = _scenes(HELDOUT_SEED, heldout, exclude={s.layout() for s in train})
    train_images = _write_images(train, root / "images", "train", blank)
    held_images = _write_images(held, root / "images", "heldout", blank)
    rng = random.Random(TRAIN_SEED)
    files = {name: root / f"{name}.jsonl" for name in
             ("captions", "vqa", "conversations", "mcq", "short_answer")}
    _write_jsonl(files["captions"], [{"image": im, "caption": caption(s)} for s, im in zip(train, train_images)])
    _write_jsonl(files["vqa"], [{"image": im, "caption": _vqa_document(s, rng)} for s, im in zip(train, train_images)])
    _write_jsonl(files["conversations"], [{"id": f"train{i}", "image": im, "conversations": _conversation(s, rng)}
                                          for i, (s, im) in enumerate(zip(train, train_images))])
    mcq, short = _heldout_items(held, held_images, random.Random(HELDOUT_SEED))
    _write_jsonl(files["mcq"], mcq)
    _write_jsonl(files["short_answer"], short)
    return {name: str(path) for name, path in files.items()}


def blank_images(folder: str | Path) -> int:
    """Replace every image under ``folder`` by the background colour at its own size; returns how many."""
    count = 0
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        with Image.open(path) as img:
            size, mode = img.size, "L" if img.mode == "L" else "RGB"
        Image.new(mode, size, BACKGROUND if mode == "RGB" else BACKGROUND[0]).save(path)
        count += 1
    return count
