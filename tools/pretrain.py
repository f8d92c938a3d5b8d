"""Train SOLO on megatron-core: one entry point for a laptop (CPU, gloo) and a cluster (torchrun, NCCL).

Example (2 processes on this machine):
  torchrun --nproc-per-node 2 tools/pretrain.py --model solo-tiny --chat-tokens \
      --data shards/imagenet:0.7 shards/text:0.3 --eval-data shards/heldout --tensor-parallel 2 --save ckpt/stage1

Without --recipe the model's own recipe applies: SOLO's stage 1 for solo-7b, "small" (a short run that
learns: lr 2e-3, 10 warm-up steps, 200 steps of 8 x 1024 tokens) for solo-small and solo-tiny.
Re-running a finished run (same --save) prints that it is complete and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys

from megatron_solo.config import (
    ParallelConfig,
    default_recipe,
    model_preset,
    preset_names,
    recipe,
    recipe_names,
)
from megatron_solo.config.data import DataConfig, DatasetSource
from megatron_solo.config.defaults import defaults
from megatron_solo.config.job import JobConfig
from megatron_solo.config.recipes import recipe_template
from megatron_solo.config.train import TrainConfig
from megatron_solo.errors import ToolArgumentParser, UserInputError, run_tool
from megatron_solo.model.specs import FP8_FORMATS, FP8_RECIPES
from megatron_solo.vocab.ids import SOLO_CHAT_VOCAB_SIZE

JOB, TRAIN, PARALLEL, DATA = defaults(JobConfig), defaults(TrainConfig), defaults(ParallelConfig), defaults(DataConfig)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = ToolArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=JOB.model, choices=preset_names())
    p.add_argument("--model-overrides", default="{}", help='JSON, e.g. \'{"num_layers": 2}\'')
    p.add_argument("--chat-tokens", action="store_true",
                   help=f"vocabulary with <|im_start|>/<|im_end|> ({SOLO_CHAT_VOCAB_SIZE} ids)")
    p.add_argument("--transformer-impl", choices=("auto", "te", "local"),
                   help="layer implementation (default auto: Transformer Engine when present with CUDA)")
    p.add_argument("--fp8", choices=FP8_FORMATS, help="FP8 training (Transformer Engine, compute capability >= 8.9)")
    p.add_argument("--fp8-recipe", choices=tuple(FP8_RECIPES),
                   help="FP8 scaling (default delayed; tensorwise: per-tensor current scaling; blockwise: Hopper and "
                        "newer; mxfp8: Blackwell)")
    p.add_argument("--recipe", choices=recipe_names(),
                   help="training defaults (default: stage1 for solo-7b, small for solo-small / solo-tiny)")
    p.add_argument("--data", nargs="+", required=True, help="shard folders, each optionally PATH:WEIGHT")
    p.add_argument("--eval-data", nargs="+", help="held-out shard folders for the validation loss (PATH[:WEIGHT])")
    p.add_argument("--eval-interval", type=int, help="validate every this many steps and at the end (default: the "
                   f"recipe's, else {TRAIN.eval_interval})")
    p.add_argument("--eval-iters", type=int, help=f"global batches per validation (default: the recipe's, else "
                   f"{TRAIN.eval_iters})")
    p.add_argument("--seq-length", type=int)
    p.add_argument("--micro-batch-size", type=int, default=TRAIN.micro_batch_size)
    p.add_argument("--global-batch-size", type=int)
    p.add_argument("--train-steps", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--min-lr", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--tensor-parallel", type=int, default=PARALLEL.tensor_parallel)
    p.add_argument("--pipeline-parallel", type=int, default=PARALLEL.pipeline_parallel)
    p.add_argument("--virtual-pipeline", type=int)
    p.add_argument("--sequence-parallel", action="store_true")
    p.add_argument("--no-distributed-optimizer", action="store_true")
    p.add_argument("--fp32", action="store_true", help="train in fp32 instead of bf16")
    p.add_argument("--recompute", action="store_true", help="full activation recompute")
    p.add_argument("--seed", type=int, default=TRAIN.seed)
    p.add_argument("--save", help="checkpoint folder; the run resumes from it when it holds one")
    p.add_argument("--save-interval", type=int, default=TRAIN.save_interval)
    p.add_argument("--init-from", help="previous stage's checkpoint: weights only, fresh optimizer")
    p.add_argument("--tokenizer", help="SentencePiece model the data was preprocessed with, saved beside the "
                                       "checkpoints for export (default: the --init-from checkpoint's, else "
                                       "mistral-common's Mistral tokenizer)")
    p.add_argument("--allow-data-change", action="store_true",
                   help="resume although the data blend differs from the checkpoint's: the new blend is read from "
                        "the checkpoint's data position (its count of consumed packs)")
    p.add_argument("--tensorboard-dir")
    p.add_argument("--data-workers", type=int, default=DATA.num_workers)
    p.add_argument("--max-drop-share", type=float, default=DATA.max_drop_share,
                   help="largest share of a source's tokens the packer may drop (samples it cannot fit) before "
                        "the run is refused")
    p.add_argument("--exit-after-steps", type=int, help="checkpoint and stop after this many steps")
    args = p.parse_args(argv)
    if args.fp8_recipe and not args.fp8:
        p.error("--fp8-recipe needs --fp8")
    return args


def _sources(items: list[str], flag: str) -> list[DatasetSource]:
    """PATH[:WEIGHT] items as dataset sources."""
    sources = []
    for item in items:
        path, _, weight = item.rpartition(":") if ":" in item else (item, "", "1")
        try:
            value = float(weight)
        except ValueError:
            raise UserInputError(f"{flag} {item}: the weight after ':' must be a number") from None
        if value <= 0:
            raise UserInputError(f"{flag} {item}: the weight must be positive")
        sources.append(DatasetSource(path=path, weight=value))
    return sources


def _model_overrides(args: argparse.Namespace) -> dict:
    """--model-overrides with the named model switches applied."""
    try:
        overrides = json.loads(args.model_overrides)
    except json.JSONDecodeError as err:
        raise UserInputError(f"--model-overrides: not JSON ({err})") from None
    if not isinstance(overrides, dict):
        raise UserInputError("--model-overrides: expected a JSON object")
    if args.chat_tokens:
        if overrides.get("vocab_size", SOLO_CHAT_VOCAB_SIZE) != SOLO_CHAT_VOCAB_SIZE:
            raise UserInputError(f"--chat-tokens sets vocab_size {SOLO_CHAT_VOCAB_SIZE}; --model-overrides asks for "
                                 f"{overrides['vocab_size']}")
        overrides["vocab_size"] = SOLO_CHAT_VOCAB_SIZE
    named = dict(transformer_impl=args.transformer_impl, fp8=args.fp8, fp8_recipe=args.fp8_recipe)
    overrides.update({k: v for k, v in named.items() if v is not None})
    model_preset(args.model, **overrides)  # fail early on a bad override
    return overrides


def build_job(args: argparse.Namespace) -> JobConfig:
    """JobConfig from parsed options (the recipe's defaults, then explicit options)."""
    name = args.recipe or default_recipe(args.model)
    overrides = {k: v for k, v in dict(
        seq_length=args.seq_length, global_batch_size=args.global_batch_size, train_steps=args.train_steps,
        eval_interval=args.eval_interval, eval_iters=args.eval_iters,
    ).items() if v is not None}
    optim = {k: v for k, v in dict(lr=args.lr, min_lr=args.min_lr, warmup_steps=args.warmup_steps).items()
             if v is not None}
    train = recipe(
        name, **overrides, optim=optim, micro_batch_size=args.micro_batch_size, bf16=not args.fp32,
        recompute=args.recompute, seed=args.seed, save_dir=args.save, save_interval=args.save_interval,
        tensorboard_dir=args.tensorboard_dir,
    )
    eval_data = None
    if args.eval_data:
        eval_data = DataConfig(datasets=_sources(args.eval_data, "--eval-data"), seed=args.seed,
                               num_workers=args.data_workers, max_drop_share=args.max_drop_share)
    return JobConfig(
        model=args.model,
        model_overrides=_model_overrides(args),
        parallel=ParallelConfig(
            tensor_parallel=args.tensor_parallel, pipeline_parallel=args.pipeline_parallel,
            virtual_pipeline=args.virtual_pipeline, sequence_parallel=args.sequence_parallel,
            use_distributed_optimizer=not args.no_distributed_optimizer,
        ),
        train=train,
        data=DataConfig(datasets=_sources(args.data, "--data"), seed=args.seed, num_workers=args.data_workers,
                        max_drop_share=args.max_drop_share),
        eval_data=eval_data,
        init_from=args.init_from,
        tokenizer=args.tokenizer,
        exit_after_steps=args.exit_after_steps,
        allow_data_change=args.allow_data_change,
        template=recipe_template(name),
    )


def main(argv=None) -> None:
    """Entry point."""
    from megatron_solo.training.loop import pretrain

    summary = pretrain(build_job(parse_args(argv)))
    if not summary.is_log_rank:
        return
    if summary.complete:
        print(f"the run is complete: iteration {summary.iteration} of {summary.total_steps}, checkpoint at "
              f"{summary.checkpoint}; nothing to do", flush=True)
        return
    line = f"done: iteration {summary.iteration}"
    if summary.losses:
        line += f", last loss {summary.losses[-1]:.4f}"
    if summary.val_losses:
        line += f", val_loss {summary.val_losses[-1][1]:.4f}"
    if summary.preempted:
        line += " (stopped early, checkpoint saved)" if summary.saved else ", stopped early (no --save: nothing saved)"
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(run_tool(main))
