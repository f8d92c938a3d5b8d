#!/usr/bin/env python
"""Answer a prompt about an image with a model exported by tools/export_to_hf.py."""

import argparse
import sys

from megatron_solo.errors import run_tool
from megatron_solo.hf.generate import generate


def main(argv=None) -> int:
    """Parse arguments, generate greedily, print the answer."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="exported model directory (Fuyu format)")
    p.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--plain", action="store_true", help="plain prompt instead of SOLO's [INST] chat template")
    p.add_argument("--max-new-tokens", type=int, default=64)
    args = p.parse_args(argv)
    print(generate(args.model, args.prompt, args.image, chat=not args.plain, max_new_tokens=args.max_new_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
