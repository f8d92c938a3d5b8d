"""The two evaluation harnesses whose files and scoring the benchmarks reproduce, named once.

A benchmark file has the schema of the harness that distributes it: VLMEvalKit's TSV, or the Hugging Face
dataset an lmms-eval task loads (parquet, Arrow, a saved folder); our JSONL uses VLMEvalKit's columns. A
generated answer is read, and scored, by one harness's rules: by default those of the harness whose
schema the file has (JSONL: VLMEvalKit's), so a number printed beside a harness's name is the one that
harness would print.
"""

from __future__ import annotations

VLMEVALKIT = "vlmevalkit"
LMMS_EVAL = "lmms-eval"
JSONL = "jsonl"  # our own rows: VLMEvalKit's columns, any answer form
RULES = (VLMEVALKIT, LMMS_EVAL)
TITLES = {VLMEVALKIT: "VLMEvalKit", LMMS_EVAL: "lmms-eval"}


def default_rule(schema: str) -> str:
    """The rules a file of ``schema`` is read by unless another is asked for."""
    return LMMS_EVAL if schema == LMMS_EVAL else VLMEVALKIT
