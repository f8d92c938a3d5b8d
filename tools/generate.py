#!/usr/bin/env python
"""Answer a prompt about an image with a model exported by tools/export_to_hf.py.

The prompt template is the one the checkpoint was trained with (recorded in the export's
solo_export.json: "plain" after pre-training, "chat" after instruction tuning); --template overrides it.
"""

import sys

from megatron_solo.config.job import CHAT_TEMPLATE, PLAIN_TEMPLATE, TEMPLATES
from megatron_solo.errors import ToolArgumentParser, run_tool
from megatron_solo.hf.generate import EXPORT_META, generate


def main(argv=None) -> int:
    """Parse arguments, generate greedily, print the answer."""
    p = ToolArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="exported model directory (Fuyu format)")
    p.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--template", choices=TEMPLATES,
                   help=f"prompt template (default: the one the model was trained with, from {EXPORT_META})")
    p.add_argument("--plain", dest="template", action="store_const", const=PLAIN_TEMPLATE,
                   help=f"same as --template {PLAIN_TEMPLATE}")
    p.add_argument("--max-new-tokens", type=int, default=64)
    args = p.parse_args(argv)
    chat = None if args.template is None else args.template == CHAT_TEMPLATE
    print(generate(args.model, args.prompt, args.image, chat=chat, max_new_tokens=args.max_new_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
