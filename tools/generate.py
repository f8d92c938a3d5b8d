#!/usr/bin/env python
"""Answer a prompt about an image with a model exported by tools/export_to_hf.py.

The prompt template is the one the checkpoint was trained with (recorded in the export's
solo_export.json: "plain" after pre-training, "chat" after instruction tuning); --template overrides it.
"""

import sys

from megatron_solo.config.cli import Command, Section, build
from megatron_solo.config.job import CHAT_TEMPLATE, TEMPLATES
from megatron_solo.config.tools import GenerateOptions
from megatron_solo.errors import run_tool
from megatron_solo.hf.generate import generate

COMMAND = Command(__doc__, Section(GenerateOptions, choices={"template": TEMPLATES}))


def main(argv: list[str]) -> int:
    """Parse arguments, generate greedily, print the answer."""
    o = build(GenerateOptions, COMMAND.parse(argv))
    chat = None if o.template is None else o.template == CHAT_TEMPLATE
    print(generate(o.model, o.prompt, o.image, chat=chat, max_new_tokens=o.max_new_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
