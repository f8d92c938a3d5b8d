"""Workers for the checkpoint tests: train a converted model briefly, run it, gather logits.

Also :func:`one_rank_conversions_here`, which runs the conversions' one-rank worker worlds in this process.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from megatron_solo.checkpoint.metadata import write_metadata
from megatron_solo.checkpoint.model_io import load_solo_model
from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.hf.importer import quiet_workers
from megatron_solo.platform import init_parallel
from tests.harness.worlds import run_world


@contextmanager
def one_rank_conversions_here() -> Iterator[None]:
    """Inside: import_hf / export_checkpoint run a one-rank worker world in this process, as run_world does.

    The library starts a process even for one rank (torch and megatron-core imports: seconds each); the
    worker's code, its user-error report and its outputs are the same in this process. Larger worlds are
    still spawned, and the command-line tests keep the spawned one-rank path covered.
    """
    import megatron_solo.hf.workers as workers

    spawned = workers.spawn
    workers.spawn = run_world
    try:
        yield
    finally:
        workers.spawn = spawned


def _gather_vocab(logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits from the tensor-parallel shards."""
    from megatron.core import parallel_state as ps

    size = ps.get_tensor_model_parallel_world_size()
    if size == 1:
        return logits
    parts = [torch.empty_like(logits) for _ in range(size)]
    torch.distributed.all_gather(parts, logits.contiguous(), group=ps.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=-1)


def forward_logits(model, cfg, tokens: torch.Tensor, patches: torch.Tensor | None) -> torch.Tensor:
    """[B, S, vocab] logits of one sequence batch (positions 0..S-1, causal)."""
    positions = torch.arange(tokens.shape[1])[None].expand_as(tokens)
    with torch.no_grad():
        out = model(tokens, positions, patches=patches)
    return _gather_vocab(out)[..., : cfg.vocab_size]


def train_and_predict(ckpt_root: str, out_root: str, inputs_file: str, steps: int, new_tokens: int) -> None:
    """Load at TP1, train ``steps`` SGD steps, save a checkpoint, record logits and a greedy continuation."""
    quiet_workers()
    parallel = ParallelConfig()
    init_parallel(parallel, seed=5)
    chunks, cfg = load_solo_model(ckpt_root, parallel)
    model = chunks[0]
    inputs = torch.load(inputs_file)
    tokens, patches = inputs["input_ids"], inputs["patches"]
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    positions = torch.arange(tokens.shape[1])[None]
    for _ in range(steps):
        labels = torch.randint(0, 32000, tokens.shape, generator=g)
        loss = model(tokens, positions, labels=labels, patches=patches).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    from megatron_solo.checkpoint.state import TrainState, save_checkpoint

    save_checkpoint(out_root, TrainState(iteration=steps), [model])
    write_metadata(out_root, cfg, parallel)
    shutil.copytree(Path(ckpt_root) / "tokenizer", Path(out_root) / "tokenizer", dirs_exist_ok=True)
    torch.save(predictions(model, cfg, tokens, patches, new_tokens), Path(out_root) / "predictions.pt")


def predictions(model, cfg, tokens: torch.Tensor, patches: torch.Tensor | None, new_tokens: int) -> dict:
    """{"logits": of ``tokens``, "greedy": the next ``new_tokens`` ids chosen greedily} of a model in eval mode."""
    logits = forward_logits(model, cfg, tokens, patches)
    seq = tokens
    for _ in range(new_tokens):
        nxt = forward_logits(model, cfg, seq, patches)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return {"logits": logits, "greedy": seq[:, tokens.shape[1]:]}


def checkpoint_predictions(ckpt_root: str, inputs_file: str, out_file: str, new_tokens: int) -> None:
    """Worker (one rank): :func:`predictions` of ``ckpt_root``'s latest checkpoint on a processor's saved inputs."""
    quiet_workers()
    parallel = ParallelConfig()
    init_parallel(parallel, seed=5)
    chunks, cfg = load_solo_model(ckpt_root, parallel)
    inputs = torch.load(inputs_file)
    torch.save(predictions(chunks[0].eval(), cfg, inputs["input_ids"], inputs["patches"], new_tokens), out_file)


def import_and_logits(src_dir: str, out_dir: str, cfg_dict: dict, tokens_file: str, out_file: str, tp: int) -> None:
    """Worker: import ``src_dir`` at TP ``tp`` into ``out_dir`` (its files already written), then its logits.

    The rank part of ``import_hf``, so several imports share one world (see ``plan_import``).
    """
    from megatron_solo.hf.importer import import_weights

    import_weights(src_dir, out_dir, cfg_dict, ParallelConfig(tensor_parallel=tp), 0.02, 1234, False)
    megatron_logits(out_dir, tokens_file, out_file, tp)


def trained_export(ckpt_root: Path, work: Path, inputs: dict, steps: int, new_tokens: int) -> tuple[Path, dict]:
    """Train ``ckpt_root`` briefly on ``inputs`` (a processor's output) in a one-rank world, export it to Fuyu.

    Returns (the export's folder, the Megatron model's logits and greedy continuation after training).
    """
    from megatron_solo.hf.exporter import export_checkpoint
    from megatron_solo.hf.processor import fuyu_image_key, fuyu_to_solo_patches

    patches = fuyu_to_solo_patches(inputs[fuyu_image_key()])
    torch.save({"input_ids": inputs["input_ids"], "patches": patches}, work / "inputs.pt")
    trained = work / "trained"
    run_world(train_and_predict, 1, str(ckpt_root), str(trained), str(work / "inputs.pt"), steps, new_tokens)
    pred = torch.load(trained / "predictions.pt")
    return export_checkpoint(trained, work / "fuyu", progress=False), pred


def megatron_logits(ckpt_root: str, tokens_file: str, out_file: str, tp: int, pp: int = 1) -> None:
    """Load at TP x PP (PP 1 here), run ``tokens`` and write the full logits from rank 0."""
    quiet_workers()
    parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp)
    init_parallel(parallel, seed=5)
    chunks, cfg = load_solo_model(ckpt_root, parallel)
    logits = forward_logits(chunks[0].eval(), cfg, torch.load(tokens_file), None)
    if torch.distributed.get_rank() == 0:
        torch.save(logits, out_file)


def raise_in_worker(message: str) -> None:
    """Worker: a user error (CheckpointError with ``message``) or, for an empty message, an internal error."""
    from megatron_solo.checkpoint import CheckpointError

    if message:
        raise CheckpointError(message)
    raise RuntimeError("an internal error in a worker")


def resave(ckpt_root: str, iteration: int, tp: int, pp: int = 1) -> None:
    """Worker: load ``ckpt_root`` at TP x PP and save it there again as ``iteration`` (a run resumed at another layout)."""
    from megatron_solo.checkpoint.state import TrainState, save_checkpoint

    quiet_workers()
    parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp)
    init_parallel(parallel, seed=5)
    chunks, _ = load_solo_model(ckpt_root, parallel)
    save_checkpoint(ckpt_root, TrainState(iteration=iteration), chunks)


def pretrain_from(images: str, texts: str, save_dir: str, steps: int, init_from: str, out: str) -> None:
    """Worker: ``pretrain --init-from`` for ``steps`` steps of one 512-token pack each; (log rank) the losses to ``out``."""
    from megatron_solo.training.loop import pretrain
    from tests.harness.training import small_job

    job = small_job(images, texts, save_dir, steps, None)
    job = dataclasses.replace(job, model_overrides={}, init_from=init_from,
                              train=dataclasses.replace(job.train, global_batch_size=1))
    summary = pretrain(job)
    if summary.is_log_rank:
        Path(out).write_text(json.dumps({"losses": summary.losses}))
