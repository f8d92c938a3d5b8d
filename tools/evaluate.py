#!/usr/bin/env python
"""Evaluate a Megatron checkpoint (any TP/PP/DP, under torchrun) or its HF export; same numbers from both.

Examples:
  torchrun --nproc-per-node 2 tools/evaluate.py --checkpoint ckpt/stage1 --tensor-parallel 2 \\
      --val-data shards/imagenet/heldout:imagenet shards/text/heldout:text --classify shards/imagenet/heldout \\
      --mcq mmstar.jsonl --caption-images cat.jpg --out report.json
  python tools/evaluate.py --hf solo-hf --val-data shards/imagenet/heldout --out report_hf.json
"""

from __future__ import annotations

import argparse
import sys

from megatron_solo.config.defaults import defaults
from megatron_solo.config.evaluation import EvalConfig
from megatron_solo.config.job import TEMPLATES
from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.data.shard_set import CONFIG_FILE
from megatron_solo.errors import run_tool
from megatron_solo.evaluation.mcq import MODES
from megatron_solo.evaluation.report import format_table
from megatron_solo.evaluation.run import DTYPES, evaluate

D = defaults(EvalConfig)


def parse_args(argv=None) -> EvalConfig:
    """Command-line options -> EvalConfig."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="Megatron save root or iter_N folder")
    model.add_argument("--hf", help="model folder written by tools/export_to_hf.py")
    p.add_argument("--tensor-parallel", type=int, default=1, help="Megatron: TP size (DP is what remains)")
    p.add_argument("--pipeline-parallel", type=int, default=1, help="Megatron: PP size")
    p.add_argument("--dtype", default=D.dtype, choices=sorted(DTYPES))
    p.add_argument("--val-data", nargs="+", default=[], metavar="SHARDS[:NAME]",
                   help="held-out shard folders: validation loss per source")
    p.add_argument("--classify", metavar="SHARDS", help="held-out classification shards: top-1/top-5 accuracy")
    p.add_argument("--class-names", help="class names (JSON list/object or text lines); default: the shards' "
                                         f"{CONFIG_FILE}")
    p.add_argument("--caption-template", help='e.g. "a photo of a {}."; default: the shards\' ' + CONFIG_FILE)
    p.add_argument("--baseline-train", metavar="SHARDS",
                   help="training shards of --classify's set: also report logistic regression on the same pixels")
    p.add_argument("--mcq", metavar="FILE.jsonl", help='multiple choice: {"image","question","options","answer"} rows')
    p.add_argument("--mcq-mode", default=D.mcq_mode, choices=MODES)
    p.add_argument("--template", choices=TEMPLATES, help="MCQ prompt template; default: the model's, else plain")
    p.add_argument("--caption-images", nargs="+", default=[], metavar="IMG", help="images to caption greedily")
    p.add_argument("--max-samples", type=int, help="at most this many samples per source and task")
    p.add_argument("--max-side", type=int, help="longest side of MCQ / caption images (default: the model's)")
    p.add_argument("--batch-tokens", type=int, default=D.batch_tokens, help="padded tokens per batch")
    p.add_argument("--max-batch", type=int, default=D.max_batch, help="documents per batch")
    p.add_argument("--mcq-max-new-tokens", type=int, default=D.mcq_max_new_tokens)
    p.add_argument("--caption-max-new-tokens", type=int, default=D.caption_max_new_tokens)
    p.add_argument("--out", help="report.json")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    return EvalConfig(
        checkpoint=a.checkpoint, hf=a.hf,
        parallel=ParallelConfig(tensor_parallel=a.tensor_parallel, pipeline_parallel=a.pipeline_parallel),
        dtype=a.dtype, val_data=a.val_data, classify=a.classify, class_names=a.class_names,
        caption_template=a.caption_template, baseline_train=a.baseline_train, mcq=a.mcq, mcq_mode=a.mcq_mode, template=a.template,
        caption_images=a.caption_images, max_samples=a.max_samples, max_side=a.max_side,
        batch_tokens=a.batch_tokens, max_batch=a.max_batch, mcq_max_new_tokens=a.mcq_max_new_tokens,
        caption_max_new_tokens=a.caption_max_new_tokens, out=a.out, progress=not a.quiet,
    )


def main(argv=None) -> int:
    """Parse arguments, evaluate, print the table on the main process."""
    report = evaluate(parse_args(argv))
    if report is not None:
        print(format_table(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
