"""Data configuration: the training blend (shards, weights, packing) and preprocessing options."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Literal

from megatron_solo.config.choices import check_choices
from megatron_solo.config.cli import cli
from megatron_solo.errors import UserInputError


@dataclass
class DatasetSource:
    """One preprocessed dataset: a folder of shards (or a list of shard paths) and its blend weight."""

    path: str | list[str]
    weight: float = 1.0
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> DatasetSource:
        """A source from its command-line spelling ``PATH[:WEIGHT]``; UserInputError for a bad weight.

        An existing path is a path, even when its name holds a ':' (``runs/2024:05``).
        """
        path, _, weight = text.rpartition(":") if ":" in text and not os.path.exists(text) else (text, "", "1")
        try:
            value = float(weight)
        except ValueError:
            raise UserInputError(f"{text}: the weight after ':' must be a number") from None
        if value <= 0:
            raise UserInputError(f"{text}: the weight must be positive")
        return cls(path=path, weight=value)

    def label(self) -> str:
        """The name reports use: ``name``, or the path when it is empty."""
        if self.name:
            return self.name
        return self.path if isinstance(self.path, str) else ",".join(map(str, self.path))


@dataclass
class DataConfig:
    """The packed training data: blend of shard sets, seed and packing policy.

    The pack length and micro-batch size are the training run's (``TrainConfig``), the patch size the
    model's (``SoloModelConfig``): the loader is given them, they are not stated twice.
    """

    # shard folders, each optionally with its blend weight
    datasets: list[DatasetSource] = field(default_factory=list, metadata=cli(
        "--data", metavar="PATH[:WEIGHT]", parse=DatasetSource.parse))
    seed: int = 1234
    # a sample longer than seq_length: "split" at a text boundary (never inside an image) or "drop";
    # both are counted in the packing stats, neither truncates silently
    overflow: Literal["split", "drop"] = "split"
    open_bins: int = 256  # packs kept open by the bounded best-fit packer
    # "tokens": weights are shares of tokens (SOLO's 0.7 / 0.3 image / text); "samples": shares of samples
    weighting: Literal["tokens", "samples"] = "tokens"
    # samples drawn per epoch; 0 = the sum of the datasets' sizes
    samples_per_epoch: int = 0
    # DataLoader worker processes per rank (they decode images)
    num_workers: int = field(default=2, metadata=cli("--data-workers"))
    # largest share of a dataset's drawn tokens the packer may drop (samples it can neither fit nor split,
    # e.g. an image block longer than seq_length) before PackedDataset.check_overflow refuses the run
    max_drop_share: float = 0.01

    def __post_init__(self) -> None:
        self.datasets = [d if isinstance(d, DatasetSource) else DatasetSource(**d) for d in self.datasets]
        check_choices(self)
        if self.open_bins <= 0:
            raise ValueError("open_bins must be positive")
        for d in self.datasets:
            if not (d.weight > 0 and math.isfinite(d.weight)):  # also refuses NaN
                raise UserInputError(f"dataset weights must be positive and finite: {d.label()} has weight "
                                     f"{d.weight}")
        if not 0 <= self.max_drop_share <= 1:
            raise UserInputError(f"max_drop_share must be within [0, 1], got {self.max_drop_share}")

    def to_dict(self) -> dict:
        """Plain dict (for checkpoints and logs)."""
        return asdict(self)


@dataclass
class PreprocessConfig:
    """How tools/preprocess_data.py turns one raw source into shards."""

    kind: str  # a registered sample kind (megatron_solo.data.kinds: classification, caption, ...)
    # folders / tars / JSON(L) / parquet / Arrow files or saved `datasets` folders of the source
    inputs: list[str] = field(metadata=cli("--input", metavar="PATH"))
    output: str  # folder for the shards, their indexes and stats.json
    image_root: str | None = None  # base folder of relative image paths (default: the input's folder)
    image_column: str | None = None  # the rows' image column (default: "image"; bytes, a path or {bytes, path})
    text_column: str | None = None  # the rows' caption / text column (default: "caption", else "text")
    class_names: str | None = None  # classification: label -> class name map (JSON or text lines)
    caption_template: str = "{}"  # classification: the caption made from the class name, e.g. "a photo of a {}."
    tokenizer: str | None = None  # SentencePiece model; default: mistral-common's Mistral model
    close_with_vision: bool = False  # the release's SFT quirk: close image blocks with <vision>
    patch_size: int = 32  # the model's patch side (pixels)
    max_side: int = 1024  # longest image side after SOLO's resize
    # beyond max_side/patch the rule cannot keep the ratio (the short side would be < 1 patch): skip
    max_aspect: float | None = 32.0  # skip more elongated images (0 or None: keep all)
    # JPEG at quality 95 with 4:4:4 chroma: visually lossless on photos, ~1/20 of fp16 patches, and the
    # fastest to decode in loader workers; "png" for lossless (screenshots, charts), or "webp"
    image_format: Literal["jpeg", "png", "webp"] = "jpeg"  # how images are stored in the shards
    image_quality: int = 95  # JPEG / WebP quality
    shard_size: int = 2000  # records per shard
    workers: int = 1  # worker processes (0: in this process)
    max_length: int | None = None  # skip samples longer than this many tokens (None: keep, packer splits)
    # SOLO decodes every image fully before the bicubic resize; True lets libjpeg decode big JPEGs at
    # 1/2..1/8 scale first (faster, but the patches differ: benchmarks/bench_jpeg_decode.py)
    fast_jpeg_decode: bool = False  # decode big JPEGs at reduced scale before the resize (not SOLO's pixels)
    prefix: str = "shard"  # shard file names: PREFIX-000000.tar
    # held-out split, written as shards in OUTPUT/heldout/: 0 = none, N >= 1 = exactly N records, 0 < f < 1 =
    # round(f x records); the records with the smallest hashes of (position, holdout_seed), per label when the
    # records are labelled (megatron_solo.data.holdout): the same split on every run, resume and worker count
    holdout: float = 0
    holdout_seed: int = 1234  # seed of the held-out split's hashes
    # fail when more than this share of one input's records is skipped (a file whose every record is
    # skipped fails at any setting); the error names the file and its commonest skip reason
    max_skip_share: float = 0.5
    # part I of N (0 <= I < N) of a job run as N processes, e.g. a Slurm array (default there:
    # SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT); part I builds the shards k with k % N == I
    part: str | None = field(default=None, metadata=cli("--part", metavar="I/N"))
    merge: bool = False  # check that every part finished and write the whole dataset's stats.json; builds nothing
    progress: bool = field(default=True, metadata=cli("--quiet"))  # --quiet: no progress bar

    def __post_init__(self) -> None:
        check_choices(self)
        if self.max_aspect == 0:  # the command line's "keep all"
            self.max_aspect = None
        if not (self.holdout >= 0 and math.isfinite(self.holdout)):
            raise UserInputError(f"holdout must be a count >= 1, a fraction in (0, 1) or 0, got {self.holdout}")
        if self.holdout >= 1 and self.holdout != int(self.holdout):
            raise UserInputError(f"holdout {self.holdout:g}: a count must be a whole number (or a fraction below 1)")
        if not 0 <= self.max_skip_share <= 1:
            raise UserInputError(f"max_skip_share must be within [0, 1], got {self.max_skip_share}")

    def to_dict(self) -> dict:
        """Plain dict (written beside the shards so a resumed run can check it is the same job).

        ``progress``, ``part`` and ``merge`` are how this run reports and which share of the job it does, not what
        the job makes: left out, so every part records the same job.
        """
        out = asdict(self)
        for key in ("progress", "part", "merge"):
            del out[key]
        return out
