#!/usr/bin/env python
"""Import a HF Mistral/Llama model or the SOLO-7B release into a megatron-core checkpoint at any TP/PP."""

import sys

from megatron_solo.config.cli import Command, Section, build
from megatron_solo.config.tools import TRAINING_LAYOUT, ImportOptions
from megatron_solo.errors import run_tool

COMMAND = Command(__doc__, Section(ImportOptions, skip=TRAINING_LAYOUT))


def main(argv: list[str]) -> int:
    """Parse arguments and run the import."""
    o = build(ImportOptions, COMMAND.parse(argv))
    from megatron_solo.hf.importer import import_hf  # after run_tool quieted megatron-core's import notices

    cfg = import_hf(o.hf, o.out, o.parallel, tokenizer=o.tokenizer, chat_tokens=o.chat_tokens,
                    close_with_vision=o.close_with_vision, init_std=o.init_std, seed=o.seed)
    print(f"wrote {o.out}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, own_workers=True))
