"""Launcher of lmms-eval with SOLO's model registered: ``python -m megatron_solo.evaluation.lmms --model solo ...``.

lmms-eval finds a model in its registry before its command line runs, so the ``solo`` model
(:mod:`.lmms_model`) is registered first; then lmms-eval's own command line takes every argument, e.g.
``python -m megatron_solo.evaluation.lmms --model solo --model_args pretrained=solo-hf --tasks mme,pope``.
lmms-eval is an optional extra (``pip install .[lmms]``).

The ``solo`` model's arguments are checked before lmms-eval starts (a user error is one line, exit 2), and
an evaluation that fails inside lmms-eval, which prints its traceback and carries on to exit 0, ends the
launcher with exit 1.
"""

from __future__ import annotations

import argparse
import sys

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


def check_solo_model(pretrained: str | None, checkpoint: str | None, dtype: str) -> None:
    """EvaluationError (one line) unless the arguments name exactly one loadable export or checkpoint."""
    from megatron_solo.evaluation.errors import EvaluationError
    from megatron_solo.evaluation.run import DTYPES

    if (pretrained is None) == (checkpoint is None):
        raise EvaluationError("solo model_args: give exactly one of pretrained=EXPORT_DIR and checkpoint=SAVE_DIR")
    if dtype not in DTYPES:
        raise EvaluationError(f"solo model_args: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if pretrained is not None:
        from megatron_solo.hf.generate import export_info

        export_info(pretrained)
    else:
        from megatron_solo.checkpoint.layout import resolve_checkpoint

        resolve_checkpoint(checkpoint)


def check_arguments(argv: list[str]) -> None:
    """Check the ``solo`` model's ``--model_args`` of each run lmms-eval's command line ``argv`` asks for."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for option in ("--model", "--model_args", "--config"):
        parser.add_argument(option)
    known, _ = parser.parse_known_args(argv)
    given = {key: value for key, value in vars(known).items() if value is not None and key != "config"}
    runs = [given]
    if known.config:  # lmms-eval's runs file: a run or a list of runs, the command line's options over each
        import yaml

        with open(known.config) as f:
            entries = yaml.safe_load(f)
        runs = [{**entry, **given} for entry in (entries if isinstance(entries, list) else [entries])]
    for run in runs:
        if run.get("model") == MODEL_NAME:
            _check_model_args(str(run.get("model_args") or ""))


def _check_model_args(model_args: str) -> None:
    from megatron_solo.evaluation.errors import EvaluationError

    items = [item for item in model_args.split(",") if item]
    malformed = [item for item in items if "=" not in item]
    if malformed:
        raise EvaluationError(f"solo model_args: {malformed[0]!r} is not KEY=VALUE (e.g. pretrained=EXPORT_DIR)")
    args = dict(item.split("=", 1) for item in items)
    check_solo_model(args.get("pretrained"), args.get("checkpoint"), args.get("dtype", "float32"))


def main(argv: list[str]) -> int:
    """Check our model's arguments, register it, run lmms-eval's command line on ``argv``; 1 if an evaluation failed."""
    check_arguments(argv)
    register()
    import lmms_eval.__main__ as lmms_cli
    from lmms_eval.cli.dispatch import main as lmms_main

    # lmms-eval logs an evaluation's exception and goes on; its own function is wrapped to see the failure
    failures: list[BaseException] = []
    evaluate_single = lmms_cli.cli_evaluate_single

    def recorded(args):
        try:
            return evaluate_single(args)
        except Exception as err:
            failures.append(err)
            raise

    lmms_cli.cli_evaluate_single = recorded
    sys.argv = [sys.argv[0], *argv]  # lmms-eval reads the process's arguments
    try:
        lmms_main()
    finally:
        lmms_cli.cli_evaluate_single = evaluate_single
    if failures:
        print(f"error: lmms-eval's evaluation failed ({type(failures[0]).__name__}: {failures[0]}); its traceback "
              "is above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from megatron_solo.errors import run_tool

    raise SystemExit(run_tool(main))
