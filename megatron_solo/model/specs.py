"""Choose the transformer layer implementation and check its precision, in one place.

Transformer Engine (TE) on GPUs, megatron-core's local layers otherwise. ``transformer_impl="auto"``
can be forced to one of them with the environment variable ``SOLO_TRANSFORMER_IMPL`` (read here and
nowhere else), so one machine with TE can run the same code under both specs.

TE's attention takes packed documents only in the thd layout, and only in 16-bit (its cuDNN and
flash kernels; the unfused fallback has no thd), so an fp32 run takes the local spec under "auto"
and is refused under "te". FP8 needs the TE spec and a GPU with FP8 tensor cores;
:func:`check_fp8` refuses everything else with one clear line.
"""

from __future__ import annotations

import functools
import importlib.util
import os

from megatron_solo.config.model import SoloModelConfig
from megatron_solo.errors import UserInputError

IMPL_ENV = "SOLO_TRANSFORMER_IMPL"
FP8_FORMATS = ("hybrid", "e4m3")
TRANSFORMER_IMPLS = ("auto", "te", "local")  # SoloModelConfig.transformer_impl's values
FP8_AMAX_ALGOS = ("max", "most_recent")
# megatron-core 0.16.1's Fp8Recipe names we can configure (its "custom" needs a quantizer factory
# module, which SoloModelConfig does not carry), with the compute capability TE 2.9-2.11 needs:
# per-tensor scaling from Ada (8.9), 1x128/128x128 block scaling from Hopper (9.0), MXFP8 from
# Blackwell (10.0).
FP8_RECIPES = {"delayed": (8, 9), "tensorwise": (8, 9), "blockwise": (9, 0), "mxfp8": (10, 0)}


class LayerImplError(UserInputError):
    """A layer implementation or precision that this machine or megatron-core cannot provide."""


@functools.cache
def transformer_engine_usable() -> bool:
    """True when Transformer Engine is installed and CUDA is present (TE is imported only then)."""
    import torch

    if not torch.cuda.is_available() or importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # a broken TE install must not stop a local-spec run
        return False
    return True


def resolve_impl(model: SoloModelConfig, *, bf16: bool = True) -> str:
    """"te" or "local" for this config on this machine (``bf16``: the run's precision).

    LayerImplError when TE is asked for but absent, or asked for an fp32 run.
    """
    requested = model.transformer_impl
    if requested == "auto":
        forced = os.environ.get(IMPL_ENV, "").strip()
        if forced not in ("", *TRANSFORMER_IMPLS):
            raise LayerImplError(f"{IMPL_ENV}={forced!r}: use 'te', 'local' or 'auto'")
        requested = forced if forced in ("te", "local") else "auto"
        if requested == "auto":
            return "te" if bf16 and transformer_engine_usable() else "local"
    if requested not in ("te", "local"):
        raise LayerImplError(f"transformer_impl must be 'auto', 'te' or 'local', got {requested!r}")
    if requested == "te" and not transformer_engine_usable():
        raise LayerImplError(
            "transformer_impl='te' needs Transformer Engine and a CUDA GPU, and this machine lacks "
            "one of them; use transformer_impl='local' (or 'auto')"
        )
    if requested == "te" and not bf16:
        raise LayerImplError("transformer_impl='te' needs bf16: Transformer Engine has no fp32 attention "
                             "over packed documents; train in bf16 or use transformer_impl='local'")
    return requested


def gpu_capability() -> tuple[int, int] | None:
    """Compute capability (major, minor) of the current GPU, None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability())


def check_fp8(model: SoloModelConfig, *, bf16: bool = True) -> None:
    """Raise LayerImplError when ``model.fp8`` is set but this machine or config cannot train in FP8."""
    if not model.fp8:
        return
    if model.fp8 not in FP8_FORMATS:
        raise LayerImplError(f"fp8 must be one of {FP8_FORMATS} (or unset), got {model.fp8!r}")
    if model.fp8_recipe not in FP8_RECIPES:
        raise LayerImplError(f"fp8_recipe must be one of {tuple(FP8_RECIPES)}, got {model.fp8_recipe!r}")
    if model.fp8_amax_compute_algo not in FP8_AMAX_ALGOS:
        raise LayerImplError(
            f"fp8_amax_compute_algo must be one of {FP8_AMAX_ALGOS}, got {model.fp8_amax_compute_algo!r}"
        )
    if model.fp8_amax_history_len < 1:
        raise LayerImplError(f"fp8_amax_history_len must be >= 1, got {model.fp8_amax_history_len}")
    if not bf16:
        raise LayerImplError("fp8 needs bf16 training: its Transformer Engine layers have no fp32 attention over packed documents")
    if not transformer_engine_usable():
        raise LayerImplError("fp8 needs Transformer Engine on a CUDA GPU, and this machine has no usable TE")
    if resolve_impl(model, bf16=bf16) != "te":
        raise LayerImplError("fp8 needs the Transformer Engine layers, but the local spec is selected "
                             f"(transformer_impl={model.transformer_impl!r}, {IMPL_ENV}={os.environ.get(IMPL_ENV)!r})")
    capability = gpu_capability()
    needed = FP8_RECIPES[model.fp8_recipe]
    if capability is None or capability < needed:
        have = "no GPU" if capability is None else "compute capability {}.{}".format(*capability)
        raise LayerImplError(
            f"fp8_recipe={model.fp8_recipe!r} needs compute capability {needed[0]}.{needed[1]} or newer, "
            f"this GPU has {have}"
        )


def fp8_gemm_shapes(model: SoloModelConfig, tensor_parallel: int) -> dict[str, tuple[int, int]]:
    """(output, input) width of each transformer-layer weight on one tensor-parallel rank, by name."""
    d, heads, groups = model.kv_channels, model.num_attention_heads, model.num_query_groups
    return {
        "linear_qkv": ((heads + 2 * groups) * d // tensor_parallel, model.hidden_size),
        "linear_proj": (model.hidden_size, heads * d // tensor_parallel),
        "linear_fc1": (2 * model.ffn_hidden_size // tensor_parallel, model.hidden_size),  # SwiGLU: gate + up
        "linear_fc2": (model.hidden_size, model.ffn_hidden_size // tensor_parallel),
    }


def check_fp8_shapes(model: SoloModelConfig, tokens: int, tensor_parallel: int = 1) -> None:
    """Raise LayerImplError when FP8 is set and a GEMM of this run has a shape TE's FP8 kernels refuse.

    ``tokens``: rows of the layer GEMMs, the tokens of one micro-batch on one rank (divided by the
    tensor-parallel size under sequence parallelism). TE's FP8 GEMMs need rows in multiples of 8 and
    inner widths in multiples of 16; MXFP8 scales blocks of 32 along both. Checked here, at start-up,
    because TE finds out only at the first forward pass, deep inside a kernel call.
    """
    if not model.fp8:
        return
    rows, cols = (32, 32) if model.fp8_recipe == "mxfp8" else (8, 16)
    if tokens % rows:
        raise LayerImplError(f"fp8 ({model.fp8_recipe}) needs the tokens of a micro-batch on one rank to be a "
                             f"multiple of {rows}; this run has {tokens} (change seq_length or micro_batch_size)")
    for name, (out, inp) in fp8_gemm_shapes(model, tensor_parallel).items():
        if out % rows or inp % cols:
            raise LayerImplError(f"fp8 ({model.fp8_recipe}) needs {name} widths in multiples of {rows} (output) and "
                                 f"{cols} (input); at tensor_parallel={tensor_parallel} it is {out} x {inp}")


def describe_precision(model: SoloModelConfig, bf16: bool) -> str:
    """Start-up line naming the layer spec and precision, e.g. "TE spec, bf16 + FP8 hybrid (delayed)"."""
    impl = resolve_impl(model, bf16=bf16)
    precision = "bf16" if bf16 else "fp32"
    if model.fp8:
        precision += f" + FP8 {model.fp8} ({model.fp8_recipe})"
    return f"{'TE' if impl == 'te' else 'local'} spec, {precision}"


def layer_spec(model: SoloModelConfig, impl: str, core_attention=None):
    """megatron-core layer spec: TE fused layers, or the local spec with ``core_attention`` injected."""
    if impl == "te":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec()
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    if core_attention is not None:
        spec.submodules.self_attention.submodules.core_attention = core_attention
    return spec
