"""FP8 training against bf16, and an FP8 checkpoint resumed in a fresh process.

A small SOLO (4 layers, width 512) trains 250 steps on packed image + text data whose text can be
learned (``tests/harness/mix.learnable_pack``), once in bf16 and once in FP8 (TE spec, ``fp8``
hybrid, the delayed recipe unless ``SOLO_FP8_RECIPE`` names another), from the same initial
weights and data: bf16 must have learned, and FP8's final loss must be within 2% of bf16's. The
FP8 run saves a checkpoint half-way (weights, distributed-optimizer state, schedule, RNG and TE's
FP8 scaling state in ``_extra_state``); a fresh process resumes it and must give the next losses
of the uninterrupted run. On the smoke run both legs are the local spec in bf16 for a few steps:
the checks' logic runs, FP8 does not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.gpu.checks import smoke
from tests.gpu.models import FP8_SHAPES, fp8_resume, fp8_train, fp8_trainer, step_data

pytestmark = pytest.mark.gpu

CURVE_TOL = 0.02  # FP8 final loss vs bf16's, relative (the goal)
RESUME_TOL = 1e-3  # resumed vs uninterrupted losses, relative (deterministic kernels asked for)
RESUME_STEPS = 10
FINAL_STEPS = 20  # the final loss is the mean over these last steps
# bf16's final loss must fall below this share of its first, else the comparison says nothing;
# the smoke run's few steps only have to lower it.
LEARNED = 1.0 if smoke() else 0.8
RECIPE = os.environ.get("SOLO_FP8_RECIPE", "delayed")
STEPS = FP8_SHAPES["smoke" if smoke() else "gpu"]["steps"]
HALF = STEPS // 2


@pytest.fixture(scope="module")
def fp8_machine(transformer_engine: str) -> None:
    """Skips where TE says this GPU cannot run the recipe (an unknown recipe fails in the run instead)."""
    if smoke():
        return
    from megatron_solo.model.specs import FP8_RECIPES, fp8_recipe_support

    if RECIPE not in FP8_RECIPES:
        return
    supported, reason = fp8_recipe_support(RECIPE)  # Transformer Engine's own answer for this GPU
    if not supported:
        pytest.skip(f"fp8_recipe={RECIPE!r} does not run on this GPU: {reason}")


@pytest.fixture(scope="module")
def curves(fp8_machine, world1, tmp_path_factory) -> dict:
    """bf16 and FP8 losses from the same initial weights, and the FP8 run's half-way checkpoint."""
    from megatron_solo.checkpoint.state import TrainState, load_checkpoint, save_checkpoint

    work = tmp_path_factory.mktemp("fp8")
    out: dict = {"checkpoint": str(work / "fp8_run")}
    with pytest.MonkeyPatch.context() as env:
        # Deterministic TE kernels, so a resume can repeat a run exactly (the resumed process inherits it).
        env.setenv("NVTE_ALLOW_NONDETERMINISTIC_ALGO", os.environ.get("NVTE_ALLOW_NONDETERMINISTIC_ALGO", "0"))
        for name, fp8 in (("bf16", None), ("fp8", "hybrid")):
            trainer = fp8_trainer(fp8, RECIPE, smoke())
            if name == "bf16":
                save_checkpoint(str(work / "init"), TrainState(iteration=0), trainer[0])
            else:
                load_checkpoint(str(work / "init"), trainer[0], load_rng=False)
                trainer[1].reload_model_params()  # the fp32 main copies follow the loaded bf16 weights
            out[name] = fp8_train(trainer, range(HALF), smoke())
            if name == "fp8":
                save_checkpoint(out["checkpoint"], TrainState(iteration=HALF), *trainer)
            out[name] += fp8_train(trainer, range(HALF, STEPS), smoke())
            del trainer
        yield out
    step_data.cache_clear()  # the runs' packs (GBs at the GPU shapes)


def test_fp8_final_loss_within_2pct_of_bf16(figures, curves):
    bf16, fp8 = curves["bf16"], curves["fp8"]
    bf16_end, fp8_end = (sum(x[-FINAL_STEPS:]) / len(x[-FINAL_STEPS:]) for x in (bf16, fp8))
    rel = abs(fp8_end - bf16_end) / bf16_end
    figures.goal(f"<= {CURVE_TOL:.0%}")
    figures.record(fp8_leg="bf16 local spec (cpu smoke)" if smoke() else f"TE FP8 hybrid, {RECIPE}", recipe=RECIPE,
                   steps=len(bf16), bf16_start=bf16[0], bf16_end=bf16_end, fp8_end=fp8_end, rel_diff=rel,
                   bf16_losses=bf16, fp8_losses=fp8)
    assert len(bf16) == len(fp8) == STEPS
    assert bf16_end < LEARNED * bf16[0], f"bf16 did not learn ({bf16[0]:.3f} -> {bf16_end:.3f}): nothing to compare"
    assert rel <= CURVE_TOL, f"FP8 final loss {fp8_end:.4f} vs bf16 {bf16_end:.4f} ({rel:.2%})"


def test_fp8_checkpoint_resumes_in_a_fresh_process(figures, curves, tmp_path: Path):
    from megatron_solo.platform import spawn

    spawn(fp8_resume, 1, curves["checkpoint"], RECIPE, smoke(), RESUME_STEPS, str(tmp_path / "resume.json"))
    got = json.loads((tmp_path / "resume.json").read_text())
    want = curves["fp8"][got["from"]:got["from"] + RESUME_STEPS]
    diff = max((abs(a - b) / abs(b) for a, b in zip(got["losses"], want)), default=float("inf"))
    figures.goal(f"<= {RESUME_TOL:.0e} (relative)")
    figures.record(resumed_from=got["from"], resumed_steps=len(got["losses"]), max_rel_diff=diff, resumed=got["losses"],
                   uninterrupted=want)
    assert got["from"] == HALF and len(got["losses"]) == len(want) == min(RESUME_STEPS, STEPS - HALF)
    assert diff <= RESUME_TOL, f"resumed {got['losses']} vs uninterrupted {want}"
