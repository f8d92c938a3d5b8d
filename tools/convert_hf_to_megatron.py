#!/usr/bin/env python
"""Import a HF Mistral/Llama model or the SOLO-7B release into a megatron-core checkpoint at any TP/PP."""

import sys

from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.errors import ToolArgumentParser, run_tool


def main(argv=None) -> int:
    """Parse arguments and run the import."""
    p = ToolArgumentParser(description=__doc__)
    p.add_argument("--hf", required=True, help="HF model directory (config.json + safetensors)")
    p.add_argument("--out", required=True, help="output save root (checkpoint, solo_model.json, tokenizer/)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the written checkpoint")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size of the written checkpoint")
    p.add_argument("--tokenizer", help="tokenizer.model or HF tokenizer dir when --hf has none")
    p.add_argument("--no-chat-tokens", action="store_true", help="do not add <|im_start|>/<|im_end|>")
    p.add_argument("--close-with-vision", action="store_true", help="the SOLO release's SFT image-close quirk")
    p.add_argument("--init-std", type=float, default=0.02, help="std of new embedding rows and the projection")
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args(argv)
    from megatron_solo.hf.importer import import_hf  # after run_tool quieted megatron-core's import notices

    cfg = import_hf(
        args.hf, args.out, ParallelConfig(tensor_parallel=args.tp, pipeline_parallel=args.pp),
        tokenizer=args.tokenizer, chat_tokens=not args.no_chat_tokens, close_with_vision=args.close_with_vision,
        init_std=args.init_std, seed=args.seed,
    )
    print(f"wrote {args.out}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, own_workers=True))
