"""Launcher of lmms-eval with SOLO's model registered: ``python -m megatron_solo.evaluation.lmms --model solo ...``.

lmms-eval finds a model in its registry before its command line runs, so the ``solo`` model
(:mod:`.lmms_model`) is registered first; then lmms-eval's own command line takes every argument, e.g.
``python -m megatron_solo.evaluation.lmms --model solo --model_args pretrained=solo-hf --tasks mme,pope``.
lmms-eval is an optional extra (``pip install .[lmms]``).
"""

from __future__ import annotations

MODEL_NAME = "solo"
MODEL_CLASS = "megatron_solo.evaluation.lmms_model.SoloLMM"


def register() -> None:
    """Add the ``solo`` model to lmms-eval's model registry."""
    try:
        from lmms_eval.models import MODEL_REGISTRY_V2
        from lmms_eval.models.registry_v2 import ModelManifest
    except ImportError as err:
        from megatron_solo.evaluation.errors import EvaluationError

        raise EvaluationError(f"lmms-eval is not installed (pip install 'lmms-eval==0.7.*'): {err}") from None
    MODEL_REGISTRY_V2.register_manifest(ModelManifest(model_id=MODEL_NAME, simple_class_path=MODEL_CLASS),
                                        overwrite=True)


def main() -> int:
    """Register the model, then run lmms-eval's command line (it reads the process's arguments)."""
    register()
    from lmms_eval.cli.dispatch import main as lmms_main

    lmms_main()
    return 0


if __name__ == "__main__":
    from megatron_solo.errors import run_tool

    raise SystemExit(run_tool(lambda argv: main()))
