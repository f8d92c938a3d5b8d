"""Parameter names as the checkpoint stores them, whatever layer implementation built the model.

megatron-core's Transformer Engine spec fuses each RMSNorm into the linear after it
(``self_attention.linear_qkv.layer_norm_weight``, ``mlp.linear_fc1.layer_norm_weight``); the local
spec keeps separate norms (``input_layernorm.weight``, ``pre_mlp_layernorm.weight``) but maps them
onto the TE names in its ``sharded_state_dict`` (``sharded_state_dict_keys_map``). So a checkpoint
always holds the TE names: they are the canonical names here, and both specs load the same
checkpoint. TE modules also carry ``_extra_state`` (FP8 scaling history), which only a TE model
has and needs.
"""

from __future__ import annotations

# local-spec module prefix -> the canonical (TE) prefix of the same weight
LOCAL_TO_CANONICAL = {
    "input_layernorm.": "self_attention.linear_qkv.layer_norm_",
    "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_",
}
EXTRA_STATE = "_extra_state"
# the model's tensors outside the decoder layers, by their checkpoint names
EMBEDDING = "embedding.word_embeddings.weight"
OUTPUT_LAYER = "output_layer.weight"
PATCH_PROJECTION = "patch_projection.weight"
FINAL_NORM = "decoder.final_layernorm.weight"


def canonical_name(name: str) -> str:
    """The checkpoint name of parameter ``name`` of a local- or TE-spec model (``decoder.layers.i.*``)."""
    head, sep, rest = name.partition(".layers.")
    if not sep:
        return name
    idx, dot, tail = rest.partition(".")
    for local, canonical in LOCAL_TO_CANONICAL.items():
        if tail.startswith(local):
            return f"{head}.layers.{idx}{dot}{canonical}{tail[len(local):]}"
    return name


def is_extra_state(name: str) -> bool:
    """Whether ``name`` is Transformer Engine's non-tensor ``_extra_state`` (FP8 metadata)."""
    return name.endswith(EXTRA_STATE)


def canonical_state_dict(state: dict) -> dict:
    """A model's tensors keyed by their canonical names, without TE's ``_extra_state``."""
    return {canonical_name(k): v for k, v in state.items() if not is_extra_state(k) and v is not None}


def drop_missing_extra_state(sharded: dict, held_keys: set[str]) -> list[str]:
    """Remove requested ``_extra_state`` objects the checkpoint does not hold; returns their state-dict keys.

    A Transformer Engine model asks for FP8 metadata a local-spec checkpoint never had (and TE modules
    the local spec lacks, e.g. ``core_attention``): those start fresh. Present ones are kept and loaded.
    ``sharded``: one model chunk's sharded state dict; ``held_keys``: the keys the checkpoint stores.
    """
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    dropped = [k for k, v in sharded.items()
               if is_extra_state(k) and isinstance(v, ShardedObject) and v.key not in held_keys]
    for k in dropped:
        del sharded[k]
    return dropped


def drop_empty_extra_state(sharded: dict) -> list[str]:
    """Remove ``_extra_state`` objects of modules that hold none (megatron-core's local layers); returns their keys.

    Those modules ignore whatever the checkpoint stores, and reading it would unpickle it: not asked for.
    """
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    empty = [k for k, v in sharded.items() if is_extra_state(k) and isinstance(v, ShardedObject) and v.data is None]
    for k in empty:
        del sharded[k]
    return empty
