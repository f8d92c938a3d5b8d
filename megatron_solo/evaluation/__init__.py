"""Evaluation of a Megatron checkpoint (any TP x PP x DP) or its HF export, with the same numbers from both.

- ``documents``: the token layout both backends score (targets, patches) and its batches;
- ``scoring``: the core: summed target log-probs and greedy continuations, batched, split over DP;
- ``megatron_backend`` / ``hf_backend``: the two models behind the core;
- ``heldout``: held-out shards as documents; ``tasks``: validation loss, classification, captions;
  ``mcq``: multiple-choice questions; ``report``: the JSON report and table; ``run``: one evaluation.
"""
