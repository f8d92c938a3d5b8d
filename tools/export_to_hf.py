#!/usr/bin/env python
"""Export a megatron_solo checkpoint (any TP/PP) to a stock-transformers Fuyu model or the SOLO release format."""

import sys

from megatron_solo.errors import ToolArgumentParser, run_tool
from megatron_solo.hf.adapters import FORMATS


def main(argv=None) -> int:
    """Parse arguments and run the export."""
    p = ToolArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True, help="save root (with latest file) or one iter_N directory")
    p.add_argument("--out", required=True, help="output directory: a new folder, or a previous export (replaced once the new one is complete)")
    p.add_argument("--format", default="fuyu", choices=FORMATS)
    p.add_argument("--model-config", help="solo_model.json of the checkpoint (default: ROOT/solo_model.json)")
    p.add_argument("--tokenizer", help="tokenizer directory (default: ROOT/tokenizer)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="cast weights (default: as stored)")
    p.add_argument("--max-shard-mb", type=int, default=512)
    args = p.parse_args(argv)
    from megatron_solo.hf.exporter import export_checkpoint  # after run_tool quieted megatron-core's notices

    out = export_checkpoint(
        args.checkpoint, args.out, args.format, model_meta=args.model_config, tokenizer_dir=args.tokenizer,
        dtype=args.dtype, max_shard_bytes=args.max_shard_mb << 20,
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, own_workers=True))
