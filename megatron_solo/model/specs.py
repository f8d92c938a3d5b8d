"""Choose the transformer layer implementation and check its precision, in one place.

Transformer Engine (TE) on GPUs, megatron-core's local layers otherwise. ``transformer_impl="auto"``
can be forced to one of them with the environment variable ``SOLO_TRANSFORMER_IMPL`` (read here and
nowhere else), so one machine with TE can run the same code under both specs.

TE's attention takes packed documents only in the thd layout. In fp32 it would run them on its
unfused fallback (TE 2.11 ``backends.py``: its cuDNN and flash kernels are 16-bit only), which does
train in thd but pads every document to the longest one and builds the full score matrices: slower
and more memory-hungry than the local spec's masked attention. So an fp32 run takes the local spec
under "auto" and is refused under "te". FP8 needs the TE spec and a GPU that TE itself says runs the
recipe; :func:`check_fp8` and :func:`check_fp8_shapes` refuse everything else with one clear line.
A TE that is installed but fails to import is never silent: the start-up line and the refusal of
"te" say why (:func:`transformer_engine_status`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import os

from megatron_solo.config.choices import choices
from megatron_solo.config.model import SoloModelConfig
from megatron_solo.errors import UserInputError

IMPL_ENV = "SOLO_TRANSFORMER_IMPL"
TRANSFORMER_IMPLS = choices(SoloModelConfig, "transformer_impl")
# Each FP8 recipe SoloModelConfig.fp8_recipe names (megatron-core 0.16.1's Fp8Recipe), with the function of transformer_engine.pytorch
# (TE 2.9 on) that says whether this GPU, CUDA and cuBLAS run it, and why not: TE knows what a
# table here would miss (MXFP8 refused on sm120+, block scaling needing CUDA >= 12.9).
FP8_RECIPES = {"delayed": "is_fp8_available", "tensorwise": "is_fp8_available",
               "blockwise": "is_fp8_block_scaling_available", "mxfp8": "is_mxfp8_available"}
# The same questions as TE before 2.9 asks them (transformer_engine.pytorch.fp8, no arguments; block
# scaling from TE 2.3 on): an older container must get the one-line refusal, not an AttributeError.
FP8_CHECKS_BEFORE_2_9 = {"is_fp8_available": "check_fp8_support", "is_mxfp8_available": "check_mxfp8_support",
                         "is_fp8_block_scaling_available": "check_fp8_block_scaling_support"}
# Divisibility TE's FP8 GEMMs need, per recipe: (rows of a GEMM operand on one rank, every GEMM width).
# Hopper FP8 GEMMs are TN only, so each of the three GEMMs of a linear layer has one of tokens, input
# and output width as its inner dimension k, and cuBLAS needs k % 16 ("Caller must pad"); TE's own
# forward assert (rows % 8) is weaker. MXFP8 scales blocks of 32 along both.
FP8_ALIGN = {"delayed": (16, 16), "tensorwise": (16, 16), "blockwise": (16, 16), "mxfp8": (32, 32)}
# FP8 block scaling quantizes a sequence-parallel input before its all-gather in 1x128 blocks:
# tokens per rank and the hidden width must be multiples of 128 (TE 2.11 Float8BlockQuantizer.is_quantizable).
BLOCKWISE_SP_ALIGN = 128
TE_IMPORT_FAILED = "Transformer Engine is installed but failed to import"


class LayerImplError(UserInputError):
    """A layer implementation or precision that this machine or megatron-core cannot provide."""


@functools.cache
def transformer_engine_status() -> tuple[bool, str]:
    """(usable, why not): TE is imported only when installed and CUDA is present; a failed import says why."""
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA GPU"
    if importlib.util.find_spec("transformer_engine") is None:
        return False, "Transformer Engine is not installed"
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as err:  # a broken TE install must not stop a local-spec run, but is named
        first = (str(err).strip().splitlines() or [""])[0][:200]
        return False, f"{TE_IMPORT_FAILED}: {type(err).__name__}: {first}"
    return True, ""


def transformer_engine_usable() -> bool:
    """True when Transformer Engine is installed, imports, and CUDA is present."""
    return transformer_engine_status()[0]


def transformer_engine_broken() -> str | None:
    """Why an installed TE failed to import on this CUDA machine (None when it imported, is absent, or no GPU)."""
    usable, why = transformer_engine_status()
    return why if not usable and why.startswith(TE_IMPORT_FAILED) else None


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
    usable, why = transformer_engine_status()
    if requested == "te" and not usable:
        raise LayerImplError(f"transformer_impl='te' needs Transformer Engine on a CUDA GPU, and here: {why}; "
                             "use transformer_impl='local' (or 'auto')")
    if requested == "te" and not bf16:
        raise LayerImplError("transformer_impl='te' runs in bf16 only: in fp32 TE's attention over packed documents "
                             "falls back to its unfused kernel (every document padded to the longest); train in "
                             "bf16 or use transformer_impl='local'")
    return requested


def fp8_recipe_support(recipe: str) -> tuple[bool, str]:
    """(supported, TE's reason if not) for ``recipe`` on this GPU, asked of Transformer Engine itself.

    TE 2.9 and later answer with ``is_*_available(return_reason=True)``; earlier 2.x with
    ``transformer_engine.pytorch.fp8.check_*_support()``. A TE with neither has no such recipe.
    """
    import transformer_engine.pytorch as te

    ask = getattr(te, FP8_RECIPES[recipe], None)
    if ask is not None:
        ok, reason = ask(return_reason=True)
        return bool(ok), str(reason)
    older = _older_fp8_check(FP8_CHECKS_BEFORE_2_9[FP8_RECIPES[recipe]])
    if older is None:
        return False, f"this Transformer Engine ({te_version()}) has no {recipe} recipe; it needs a newer one"
    ok, reason = older()
    return bool(ok), str(reason)


def _older_fp8_check(name: str):
    """``transformer_engine.pytorch.fp8.<name>`` of a TE before 2.9, or None where it has none."""
    try:
        fp8 = importlib.import_module("transformer_engine.pytorch.fp8")
    except ImportError:
        return None
    return getattr(fp8, name, None)


def te_version() -> str:
    """The installed Transformer Engine's version, as its package metadata gives it."""
    for name in ("transformer-engine", "transformer_engine"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "version unknown"


def check_fp8(model: SoloModelConfig, *, bf16: bool = True) -> None:
    """Raise LayerImplError when ``model.fp8`` is set but this machine or config cannot train in FP8."""
    if not model.fp8:
        return
    if model.fp8_amax_history_len < 1:
        raise LayerImplError(f"fp8_amax_history_len must be >= 1, got {model.fp8_amax_history_len}")
    if not bf16:
        raise LayerImplError("fp8 needs bf16 training: FP8 runs on the Transformer Engine layers, which run in bf16 "
                             "only (see transformer_impl='te')")
    usable, why = transformer_engine_status()
    if not usable:
        raise LayerImplError(f"fp8 needs Transformer Engine on a CUDA GPU, and here: {why}")
    if resolve_impl(model, bf16=bf16) != "te":
        raise LayerImplError("fp8 needs the Transformer Engine layers, but the local spec is selected "
                             f"(transformer_impl={model.transformer_impl!r}, {IMPL_ENV}={os.environ.get(IMPL_ENV)!r})")
    supported, reason = fp8_recipe_support(model.fp8_recipe)
    if not supported:
        raise LayerImplError(f"fp8_recipe={model.fp8_recipe!r} does not run here; Transformer Engine says: "
                             f"{reason or 'unsupported'}")


def fp8_gemm_shapes(model: SoloModelConfig, tensor_parallel: int) -> dict[str, tuple[int, int]]:
    """(output, input) width of each transformer-layer weight on one tensor-parallel rank, by name."""
    d, heads, groups = model.kv_channels, model.num_attention_heads, model.num_query_groups
    return {
        "linear_qkv": ((heads + 2 * groups) * d // tensor_parallel, model.hidden_size),
        "linear_proj": (model.hidden_size, heads * d // tensor_parallel),
        "linear_fc1": (2 * model.ffn_hidden_size // tensor_parallel, model.hidden_size),  # SwiGLU: gate + up
        "linear_fc2": (model.hidden_size, model.ffn_hidden_size // tensor_parallel),
    }


def check_fp8_shapes(model: SoloModelConfig, tokens: int, tensor_parallel: int = 1, *,
                     sequence_parallel: bool = False) -> None:
    """Raise LayerImplError when FP8 is set and a GEMM of this run has a shape TE's FP8 kernels refuse.

    ``tokens``: the tokens of one micro-batch on one rank (divided by the tensor-parallel size under
    sequence parallelism, so a multiple of 16 there keeps the gathered GEMM rows one too). Checked here,
    at start-up, because TE and cuBLAS find out only inside a kernel call, the backward one at that.
    """
    if not model.fp8:
        return
    rows, cols = FP8_ALIGN[model.fp8_recipe]
    if tokens % rows:
        raise LayerImplError(f"fp8 ({model.fp8_recipe}) needs the tokens of a micro-batch on one rank to be a "
                             f"multiple of {rows}; this run has {tokens} (change seq_length or micro_batch_size)")
    for name, (out, inp) in fp8_gemm_shapes(model, tensor_parallel).items():
        if out % cols or inp % cols:
            raise LayerImplError(f"fp8 ({model.fp8_recipe}) needs {name} widths (output x input) in multiples of "
                                 f"{cols}; at tensor_parallel={tensor_parallel} it is {out} x {inp}")
    block = BLOCKWISE_SP_ALIGN
    if model.fp8_recipe == "blockwise" and sequence_parallel and (tokens % block or model.hidden_size % block):
        raise LayerImplError(f"fp8 (blockwise) with sequence parallelism needs the tokens per rank and hidden_size "
                             f"in multiples of {block}; this run has {tokens} tokens per rank, hidden_size "
                             f"{model.hidden_size}")


def describe_precision(model: SoloModelConfig, bf16: bool) -> str:
    """Start-up line naming the layer spec and precision, e.g. "TE spec, bf16 + FP8 hybrid (delayed)".

    An installed TE that failed to import is named with its error, whichever spec runs.
    """
    impl = resolve_impl(model, bf16=bf16)
    precision = "bf16" if bf16 else "fp32"
    if model.fp8:
        precision += f" + FP8 {model.fp8} ({model.fp8_recipe})"
    line = f"{'TE' if impl == 'te' else 'local'} spec, {precision}"
    broken = transformer_engine_broken()
    return f"{line}; {broken}" if broken else line


def layer_spec(model: SoloModelConfig, impl: str, core_attention=None):
    """megatron-core layer spec: TE fused layers, or the local spec with ``core_attention`` injected.

    The local spec's norms are :class:`~megatron_solo.model.norm.LocalRMSNorm` (megatron-core's own local
    norm refuses sequence parallelism; this one is the same RMSNorm, its weight marked for it).
    """
    if impl == "te":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=model.qk_layernorm)
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from megatron_solo.model.norm import LocalRMSNorm

    spec = get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=model.qk_layernorm)
    layer, attention = spec.submodules, spec.submodules.self_attention.submodules
    layer.input_layernorm = layer.pre_mlp_layernorm = LocalRMSNorm
    if model.qk_layernorm:
        attention.q_layernorm = attention.k_layernorm = LocalRMSNorm
    if core_attention is not None:
        attention.core_attention = core_attention
    return spec


def decoder_spec(model: SoloModelConfig, impl: str, config, vp_stage: int | None = None, core_attention=None):
    """What GPTModel builds its decoder from: :func:`layer_spec`, as a block with a LocalRMSNorm final norm (local).

    Given a layer spec, megatron-core's TransformerBlock takes its module-wide norm (TE's with TE installed,
    else the local one that refuses sequence parallelism) for the final norm; the block spec names ours.
    """
    spec = layer_spec(model, impl, core_attention)
    if impl == "te":
        return spec
    from megatron.core.transformer.transformer_block import (
        TransformerBlockSubmodules,
        get_num_layers_to_build,
    )

    from megatron_solo.model.norm import LocalRMSNorm

    layers = get_num_layers_to_build(config, vp_stage=vp_stage)  # this pipeline stage's (and chunk's) layers
    return TransformerBlockSubmodules(layer_specs=[spec] * layers, layer_norm=LocalRMSNorm)
