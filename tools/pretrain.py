"""Train SOLO on megatron-core: one entry point for a laptop (CPU, gloo) and a cluster (torchrun, NCCL).

Example (2 processes on this machine):
  torchrun --nproc-per-node 2 tools/pretrain.py --model solo-tiny --data shards/imagenet:0.7 shards/text:0.3 \
      --seq-length 1024 --global-batch-size 8 --train-steps 20 --tensor-parallel 2 --save ckpt/stage1
"""

from __future__ import annotations

import argparse
import json
import sys

from megatron_solo.config import ParallelConfig, model_preset, preset_names
from megatron_solo.config.data import DataConfig, DatasetSource
from megatron_solo.config.defaults import defaults
from megatron_solo.config.job import JobConfig
from megatron_solo.config.recipes import recipe, recipe_names
from megatron_solo.config.train import TrainConfig
from megatron_solo.errors import run_tool

JOB, TRAIN, PARALLEL, DATA = defaults(JobConfig), defaults(TrainConfig), defaults(ParallelConfig), defaults(DataConfig)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=JOB.model, choices=preset_names())
    p.add_argument("--model-overrides", default="{}", help='JSON, e.g. \'{"num_layers": 2}\'')
    p.add_argument("--recipe", default="stage1", choices=recipe_names(), help="SOLO stage defaults")
    p.add_argument("--data", nargs="+", required=True, help="shard folders, each optionally PATH:WEIGHT")
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
    p.add_argument("--tensorboard-dir")
    p.add_argument("--data-workers", type=int, default=DATA.num_workers)
    p.add_argument("--exit-after-steps", type=int, help="checkpoint and stop after this many steps")
    return p.parse_args(argv)


def build_job(args: argparse.Namespace) -> JobConfig:
    """JobConfig from parsed options (recipe defaults, then explicit options)."""
    overrides = {k: v for k, v in dict(
        seq_length=args.seq_length, global_batch_size=args.global_batch_size, train_steps=args.train_steps,
    ).items() if v is not None}
    optim = {k: v for k, v in dict(lr=args.lr, min_lr=args.min_lr, warmup_steps=args.warmup_steps).items()
             if v is not None}
    train = recipe(
        args.recipe, **overrides, optim=optim, micro_batch_size=args.micro_batch_size, bf16=not args.fp32,
        recompute=args.recompute, seed=args.seed, save_dir=args.save, save_interval=args.save_interval,
        tensorboard_dir=args.tensorboard_dir,
    )
    sources = []
    for item in args.data:
        path, _, weight = item.rpartition(":") if ":" in item else (item, "", "1")
        sources.append(DatasetSource(path=path, weight=float(weight)))
    model_overrides = json.loads(args.model_overrides)
    model_preset(args.model, **model_overrides)  # fail early on a bad override
    return JobConfig(
        model=args.model,
        model_overrides=model_overrides,
        parallel=ParallelConfig(
            tensor_parallel=args.tensor_parallel, pipeline_parallel=args.pipeline_parallel,
            virtual_pipeline=args.virtual_pipeline, sequence_parallel=args.sequence_parallel,
            use_distributed_optimizer=not args.no_distributed_optimizer,
        ),
        train=train,
        data=DataConfig(datasets=sources, seed=args.seed, num_workers=args.data_workers),
        init_from=args.init_from,
        exit_after_steps=args.exit_after_steps,
    )


def main(argv=None) -> None:
    """Entry point."""
    from megatron_solo.training.loop import pretrain

    summary = pretrain(build_job(parse_args(argv)))
    if summary.is_log_rank:
        print(f"done: iteration {summary.iteration}, last loss {summary.losses[-1]:.4f}"
              + (" (stopped early, checkpoint saved)" if summary.preempted else ""), flush=True)


if __name__ == "__main__":
    sys.exit(run_tool(main))
