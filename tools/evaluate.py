#!/usr/bin/env python
"""Evaluate a Megatron checkpoint (any TP/PP/DP, under torchrun) or its HF export; same numbers from both.

Examples:
  torchrun --nproc-per-node 2 tools/evaluate.py --checkpoint ckpt/stage1 --tensor-parallel 2 \\
      --val-data shards/imagenet/heldout:imagenet shards/text/heldout:text --classify shards/imagenet/heldout \\
      --mcq mmstar.jsonl --caption-images cat.jpg --out report.json
  python tools/evaluate.py --hf solo-hf --benchmark MME.tsv MMBench_DEV_EN.tsv pope=test-00000-of-00001.parquet \
      --benchmark-mode both --out bench.json
  python tools/evaluate.py --hf solo-hf --val-data shards/imagenet/heldout --out report_hf.json
"""

from __future__ import annotations

import sys

from megatron_solo.config.cli import Command, Section, build
from megatron_solo.config.evaluation import EvalConfig
from megatron_solo.config.tools import TRAINING_LAYOUT
from megatron_solo.errors import run_tool
from megatron_solo.evaluation.benchmarks import BENCHMARKS
from megatron_solo.evaluation.report import format_table
from megatron_solo.evaluation.run import evaluate

COMMAND = Command(__doc__, Section(
    EvalConfig, skip=TRAINING_LAYOUT, one_of=("checkpoint", "hf"),
    help={"benchmark": "benchmark files as VLMEvalKit (TSV) or lmms-eval (parquet, saved datasets folder) "
                       f"distribute them, or JSONL: NAME=PATH, NAME one of {', '.join(BENCHMARKS)} or the "
                       "harness's name of it (MME, MMBench_DEV_EN, SEEDBench_IMG, mmbench_en_dev, ...; any case), "
                       "or a PATH named so (MMBench_DEV_EN.tsv); answers are read and scored by the rules of the "
                       "harness whose file it is (JSONL: VLMEvalKit's)"},
))


def parse_args(argv: list[str]) -> EvalConfig:
    """Command-line options -> EvalConfig."""
    return build(EvalConfig, COMMAND.parse(argv))


def main(argv: list[str]) -> int:
    """Parse arguments, evaluate, print the table on the main process."""
    evaluate(parse_args(argv), on_report=lambda report: print(format_table(report), flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
