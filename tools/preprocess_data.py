#!/usr/bin/env python
"""Turn a raw source (classification, caption, interleaved, text, conversation) into SOLO shards."""

import argparse
import json
import sys

from megatron_solo.config.data import PreprocessConfig
from megatron_solo.data.preprocess import preprocess
from megatron_solo.data.sources import KINDS


def main(argv=None) -> int:
    """Parse arguments, run the preprocessing job, print its stats."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kind", required=True, choices=KINDS)
    p.add_argument("--input", nargs="+", required=True, help="folders / tars / JSON(L) files of the source")
    p.add_argument("--output", required=True, help="folder for the shards, their indexes and stats.json")
    p.add_argument("--image-root", help="base folder of relative image paths (default: the input's folder)")
    p.add_argument("--class-names", help="classification: label -> class name map (JSON or text lines)")
    p.add_argument("--caption-template", default="{}", help='classification caption, e.g. "a photo of a {}."')
    p.add_argument("--tokenizer", help="SentencePiece model (default: mistral-common's Mistral tokenizer)")
    p.add_argument("--close-with-vision", action="store_true", help="the SOLO release's SFT image-close quirk")
    p.add_argument("--patch-size", type=int, default=32)
    p.add_argument("--max-side", type=int, default=1024)
    p.add_argument("--max-aspect", type=float, default=32.0, help="skip more elongated images (0: keep all)")
    p.add_argument("--image-format", default="jpeg", choices=["jpeg", "png", "webp"])
    p.add_argument("--image-quality", type=int, default=95)
    p.add_argument("--shard-size", type=int, default=2000, help="records per shard")
    p.add_argument("--workers", type=int, default=1, help="worker processes (0: in this process)")
    p.add_argument("--max-length", type=int, help="skip samples longer than this many tokens")
    p.add_argument("--prefix", default="shard")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    cfg = PreprocessConfig(
        kind=a.kind, inputs=a.input, output=a.output, image_root=a.image_root, class_names=a.class_names,
        caption_template=a.caption_template, tokenizer=a.tokenizer, close_with_vision=a.close_with_vision,
        patch_size=a.patch_size, max_side=a.max_side, max_aspect=a.max_aspect or None,
        image_format=a.image_format, image_quality=a.image_quality, shard_size=a.shard_size,
        workers=a.workers, max_length=a.max_length, prefix=a.prefix,
    )
    stats = preprocess(cfg, progress=not a.quiet)
    json.dump({k: v for k, v in stats.items() if k != "skip_examples"}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
