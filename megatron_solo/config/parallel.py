"""Parallel layout: tensor x pipeline (x virtual stages) x data parallel."""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_solo.config.cli import cli


@dataclass
class ParallelConfig:
    """How a job is split over its processes; data parallel is what remains."""

    # tensor-parallel size (of the written checkpoint when converting); data parallel is what remains
    tensor_parallel: int = field(default=1, metadata=cli("--tensor-parallel", "--tp"))
    pipeline_parallel: int = field(default=1, metadata=cli("--pipeline-parallel", "--pp"))  # pipeline stages
    virtual_pipeline: int | None = None  # model chunks per pipeline stage (the interleaved schedule)
    # split each sequence's norms, dropout and residual stream over the tensor-parallel ranks in training
    # (default: on with tensor parallelism on GPUs, off on the CPU; never at TP1; evaluation runs without)
    sequence_parallel: bool | None = None
    # --no-distributed-optimizer: a plain optimizer, not megatron-core's distributed one (state sharded over DP)
    use_distributed_optimizer: bool = field(default=True, metadata=cli("--no-distributed-optimizer"))

    def data_parallel(self, world_size: int) -> int:
        """Data-parallel size for ``world_size`` processes; ValueError if the layout does not divide it."""
        model_parallel = self.tensor_parallel * self.pipeline_parallel
        if self.tensor_parallel < 1 or self.pipeline_parallel < 1:
            raise ValueError(f"tensor_parallel and pipeline_parallel must be >= 1, got {self}")
        if world_size % model_parallel:
            raise ValueError(
                f"world size {world_size} is not divisible by tensor_parallel x pipeline_parallel "
                f"= {self.tensor_parallel} x {self.pipeline_parallel} = {model_parallel}"
            )
        if self.virtual_pipeline is not None:
            if self.virtual_pipeline < 1:
                raise ValueError(f"virtual_pipeline must be >= 1, got {self.virtual_pipeline}")
            if self.virtual_pipeline > 1 and self.pipeline_parallel < 2:
                raise ValueError("virtual pipeline stages need pipeline_parallel >= 2")
        return world_size // model_parallel

    @property
    def vpp(self) -> int | None:
        """megatron-core's virtual pipeline size (None when not interleaving)."""
        return self.virtual_pipeline if self.virtual_pipeline and self.virtual_pipeline > 1 else None

    def describe(self, world_size: int) -> str:
        """Short name like ``TP2PP2DP1VP2`` (``SP`` at the end with sequence parallelism on)."""
        name = f"TP{self.tensor_parallel}PP{self.pipeline_parallel}DP{self.data_parallel(world_size)}"
        return name + (f"VP{self.vpp}" if self.vpp else "") + ("SP" if self.sequence_parallel else "")
