#!/usr/bin/env python
"""Turn a raw source (classification, caption, interleaved, text, conversation) into SOLO shards.

One job in one process, or part I of N of it (--part I/N, or the Slurm array task: see
examples/slurm/preprocess_array.sbatch); --merge checks that every part finished and writes stats.json.
"""

import json
import sys

from megatron_solo.config.cli import Command, Section, build
from megatron_solo.config.data import PreprocessConfig
from megatron_solo.data.kinds import kind_names
from megatron_solo.data.preprocess import preprocess
from megatron_solo.errors import run_tool

COMMAND = Command(__doc__, Section(PreprocessConfig, choices={"kind": kind_names()}))


def main(argv: list[str]) -> int:
    """Parse arguments, run the preprocessing job, print its stats."""
    cfg = build(PreprocessConfig, COMMAND.parse(argv))
    stats = preprocess(cfg, progress=cfg.progress)
    if "heldout" in stats:
        stats["heldout"] = {k: v for k, v in stats["heldout"].items() if k != "skip_examples"}
    json.dump({k: v for k, v in stats.items() if k != "skip_examples"}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
