"""Set up torch.distributed and megatron-core's model-parallel groups.

NCCL and the real GPU when CUDA is present; gloo and the CPU emulation of CUDA
(:mod:`megatron_solo.platform.cpu_emulation`) otherwise. Every other package asks
this module for the device rather than deciding itself.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import socket

import torch
import torch.distributed as dist

from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.platform import cpu_emulation


def uses_cuda() -> bool:
    """Whether this process runs on a real GPU."""
    return torch.cuda.is_available() and not cpu_emulation.is_enabled()


def current_device() -> torch.device:
    """The device model tensors live on in this process."""
    if uses_cuda():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_master_port(job_id: int | str) -> int:
    """The rendezvous port of a Slurm job: 10000 + job id mod 20000.

    A fixed port makes two jobs sharing a node collide; deriving it from the job id
    keeps them apart. The range stays below Linux's ephemeral ports (32768 and up),
    which outgoing connections take at random. The sbatch scripts use the same rule.
    """
    return 10000 + int(job_id) % 20000


def device_for_local_rank(local_rank: int, device_count: int) -> int:
    """The CUDA device index a process with ``local_rank`` uses when it sees ``device_count`` GPUs.

    Sites that bind one GPU per task (``--gpus-per-task``, ``--gpu-bind``) show each
    task a single device 0 whatever its local rank, so the index wraps around what
    the process actually sees.
    """
    if device_count < 1:
        raise ValueError(f"no CUDA device visible to local rank {local_rank}")
    return local_rank % device_count


def env_from_slurm() -> None:
    """Map srun's task variables onto torch.distributed's, for jobs started by srun without torchrun.

    Inside an srun step (SLURM_STEP_NUM_TASKS is set) the step's own task numbers win
    over any RANK/WORLD_SIZE inherited from the submitting shell; under torchrun, which
    numbers its workers itself, nothing changes. The batch script must export
    MASTER_ADDR (the first host of the allocation) and may export MASTER_PORT; the
    default port is derived from SLURM_JOB_ID (:func:`slurm_master_port`).
    """
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env or "SLURM_STEP_NUM_TASKS" not in env or "SLURM_PROCID" not in env:
        return
    if "MASTER_ADDR" not in env:
        raise RuntimeError(
            "started by srun without MASTER_ADDR: export MASTER_ADDR=$(scontrol show hostnames "
            "$SLURM_JOB_NODELIST | head -n1) in the batch script"
        )
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env["SLURM_STEP_NUM_TASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env.setdefault("MASTER_PORT", str(slurm_master_port(env["SLURM_JOB_ID"])) if "SLURM_JOB_ID" in env else "29500")


def init_distributed(timeout_minutes: int = 10) -> tuple[int, int]:
    """Join the process group named by the launcher's environment; return (rank, world_size).

    Without RANK/WORLD_SIZE in the environment this starts a one-process world on a
    free local port, so the same entry point runs on a laptop.
    """
    if not torch.cuda.is_available():
        cpu_emulation.enable()
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    env_from_slurm()
    if "RANK" in os.environ:
        rank, world, init_method = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "env://"
    else:
        # The one-process world is named in the call, not in os.environ, so that tools this
        # process starts later do not take themselves for ranks of a launcher's job.
        rank, world, init_method = 0, 1, f"tcp://127.0.0.1:{free_port()}"
    if torch.cuda.is_available():
        torch.cuda.set_device(device_for_local_rank(int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(
        backend=backend,
        init_method=init_method,
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )
    return rank, world


# The process groups megatron-core made for the current layout (see _destroy_layout).
_LAYOUT_GROUPS: list[dist.ProcessGroup] = []


def _group_map() -> dict:
    return dist.distributed_c10d._world.pg_map


def _destroy_layout() -> None:
    """Forget megatron-core's groups and destroy them.

    megatron-core's destroy_model_parallel only drops its references; each group it made stays
    registered with torch.distributed with its own communication threads (about 50 threads per
    layout with gloo), so a process that changes layout (a test, a worker trying several) would
    gather them.
    """
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    while _LAYOUT_GROUPS:
        group = _LAYOUT_GROUPS.pop()
        if group in _group_map():
            dist.destroy_process_group(group)


def ranks_with(flag: bool) -> int:
    """How many ranks of the world pass a true ``flag`` (one small all-reduce: every rank must call it alike).

    What lets every rank take the same branch when only some saw a reason to (a signal, a failed write, a
    changed structure). Without a process group it is this process's own flag.
    """
    count = torch.tensor([float(flag)], device=current_device())
    if dist.is_initialized():
        dist.all_reduce(count)
    return int(count.item())


def resolve_sequence_parallel(cfg: ParallelConfig) -> ParallelConfig:
    """``cfg`` with ``sequence_parallel`` decided for a training run on this machine.

    Unset: on where tensor parallelism runs on GPUs (as Megatron-LM's training scripts run it), off on the
    CPU, where it would only add collectives to the same arithmetic; asked for, it runs on the CPU too. At
    TP1 it is off whatever was asked, as Megatron-LM does (there is nothing to split; megatron-core refuses it).
    """
    asked = cfg.sequence_parallel
    on = cfg.tensor_parallel > 1 and (uses_cuda() if asked is None else asked)
    return cfg if asked is on else dataclasses.replace(cfg, sequence_parallel=on)


def init_parallel(cfg: ParallelConfig, seed: int = 1234) -> int:
    """Create megatron-core's TP/PP/DP groups for ``cfg`` and seed its RNG tracker; return DP size."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    if not dist.is_initialized():
        init_distributed()
    world = dist.get_world_size()
    data_parallel = cfg.data_parallel(world)
    _destroy_layout()
    before = set(_group_map())
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=cfg.tensor_parallel,
        pipeline_model_parallel_size=cfg.pipeline_parallel,
        virtual_pipeline_model_parallel_size=cfg.vpp,
    )
    _LAYOUT_GROUPS.extend(group for group in _group_map() if group not in before)
    model_parallel_cuda_manual_seed(seed)
    return data_parallel


def teardown() -> None:
    """Destroy megatron-core's groups and the process group (safe to call twice)."""
    _destroy_layout()
    if dist.is_initialized():
        dist.destroy_process_group()


def pipeline_comm_settings() -> dict:
    """TransformerConfig settings for pipeline p2p traffic on this backend.

    megatron-core's batched p2p path posts a send-to-prev and a send-to-next in one
    batch; with two pipeline stages prev and next are the same peer, and gloo matches
    the two same-shaped messages in posting order, swapping activations and gradients
    under the interleaved schedule. The unbatched path sends the two directions over
    different communicators, which gloo keeps apart.
    """
    return {"batch_p2p_comm": uses_cuda()}
