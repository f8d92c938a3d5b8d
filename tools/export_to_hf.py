#!/usr/bin/env python
"""Export a megatron_solo checkpoint (any TP/PP) to a stock-transformers Fuyu model or the SOLO release format."""

import sys

from megatron_solo.config.cli import Command, Section, build
from megatron_solo.config.tools import ExportOptions
from megatron_solo.errors import run_tool
from megatron_solo.hf.adapters import FORMATS

COMMAND = Command(__doc__, Section(ExportOptions, choices={"format": FORMATS}))


def main(argv: list[str]) -> int:
    """Parse arguments and run the export."""
    o = build(ExportOptions, COMMAND.parse(argv))
    from megatron_solo.hf.exporter import export_checkpoint  # after run_tool quieted megatron-core's notices

    out = export_checkpoint(o.checkpoint, o.out, o.format, model_meta=o.model_config, tokenizer_dir=o.tokenizer,
                            dtype=o.dtype, max_shard_bytes=o.max_shard_mb << 20)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, own_workers=True))
