#!/usr/bin/env python
"""Turn a raw source (classification, caption, interleaved, text, conversation) into SOLO shards."""

import argparse
import json
import sys

from megatron_solo.config.data import PreprocessConfig
from megatron_solo.config.defaults import defaults
from megatron_solo.data.kinds import kind_names
from megatron_solo.data.preprocess import preprocess
from megatron_solo.errors import run_tool

D = defaults(PreprocessConfig)


def main(argv=None) -> int:
    """Parse arguments, run the preprocessing job, print its stats."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kind", required=True, choices=kind_names())
    p.add_argument("--input", nargs="+", required=True, help="folders / tars / JSON(L) files of the source")
    p.add_argument("--output", required=True, help="folder for the shards, their indexes and stats.json")
    p.add_argument("--image-root", help="base folder of relative image paths (default: the input's folder)")
    p.add_argument("--class-names", help="classification: label -> class name map (JSON or text lines)")
    p.add_argument("--caption-template", default=D.caption_template, help='classification caption, e.g. "a photo of a {}."')
    p.add_argument("--tokenizer", help="SentencePiece model (default: mistral-common's Mistral tokenizer)")
    p.add_argument("--close-with-vision", action="store_true", help="the SOLO release's SFT image-close quirk")
    p.add_argument("--patch-size", type=int, default=D.patch_size)
    p.add_argument("--max-side", type=int, default=D.max_side)
    p.add_argument("--max-aspect", type=float, default=D.max_aspect, help="skip more elongated images (0: keep all)")
    p.add_argument("--image-format", default=D.image_format, choices=["jpeg", "png", "webp"])
    p.add_argument("--image-quality", type=int, default=D.image_quality)
    p.add_argument("--shard-size", type=int, default=D.shard_size, help="records per shard")
    p.add_argument("--workers", type=int, default=D.workers, help="worker processes (0: in this process)")
    p.add_argument("--max-length", type=int, help="skip samples longer than this many tokens")
    p.add_argument("--fast-jpeg-decode", action="store_true",
                   help="decode big JPEGs at reduced scale before the resize (faster; not SOLO's exact pixels)")
    p.add_argument("--holdout", type=float, default=D.holdout,
                   help="hold out N records (N >= 1) or a fraction (0 < f < 1) as shards in OUTPUT/heldout/ "
                        "(deterministic; stratified by label for classification)")
    p.add_argument("--holdout-seed", type=int, default=D.holdout_seed)
    p.add_argument("--prefix", default=D.prefix)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    cfg = PreprocessConfig(
        kind=a.kind, inputs=a.input, output=a.output, image_root=a.image_root, class_names=a.class_names,
        caption_template=a.caption_template, tokenizer=a.tokenizer, close_with_vision=a.close_with_vision,
        patch_size=a.patch_size, max_side=a.max_side, max_aspect=a.max_aspect or None,
        image_format=a.image_format, image_quality=a.image_quality, shard_size=a.shard_size,
        workers=a.workers, max_length=a.max_length, prefix=a.prefix,
        fast_jpeg_decode=a.fast_jpeg_decode, holdout=a.holdout, holdout_seed=a.holdout_seed,
    )
    stats = preprocess(cfg, progress=not a.quiet)
    if "heldout" in stats:
        stats["heldout"] = {k: v for k, v in stats["heldout"].items() if k != "skip_examples"}
    json.dump({k: v for k, v in stats.items() if k != "skip_examples"}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
