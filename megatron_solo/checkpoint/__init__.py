"""The Megatron checkpoint format, owned here alone.

- ``layout``: where checkpoints live (``SAVE/iter_N``, the ``latest`` file, ``.partial`` folders),
  resolving a save root or an iteration folder;
- ``state``: atomic save and load at any TP/PP/DP layout (weights, distributed optimizer, scheduler,
  RNG, train state) with megatron-core ``dist_checkpointing``;
- ``optimizer_state``: the optimizer's part (the distributed optimizer as each rank's grad-buffer shards), and
  ``optimizer_reshard``: those shards read at another TP/PP layout through the bucket index saved beside them;
- ``save_strategy``: the shards written by every data-parallel replica, the plan kept while the structure holds;
- ``metadata``: ``solo_model.json`` (model config and saved layout) and the tokenizer copy beside it;
- ``weights``: weights-only loading in place (export) and owned-storage state for the importer;
- ``model_io``: a SoloModel built from a checkpoint's metadata and loaded at a given layout.

Every problem with a checkpoint a user named raises :class:`CheckpointError`.
"""

from megatron_solo.checkpoint.layout import CheckpointError

__all__ = ["CheckpointError"]
