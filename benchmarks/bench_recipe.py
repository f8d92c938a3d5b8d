"""SOLO's stage-1 ablation (the paper's Figure 3) at CPU scale: does stage 2 learn captions better from stage 1?

Runs examples/recipe.sh twice side by side (one core each), the images chain only, up to stage 2, both
validating on the same held-out scene captions every ``--eval-interval`` steps:
  from stage 1   stage 1 (digits, ImageNet photos, text) -> stage 2
  from base      stage 2 straight from the untrained model stage 1 starts from (STAGE2_FROM=base)
Both stage-2 runs have the same data, packs, seed, steps and schedule; only their starting weights differ.
Prints both caption validation losses at each evaluation and their ratio (base / stage 1) at the end, and
draws both curves in one matplotlib picture.

  python benchmarks/bench_recipe.py [--steps1 150] [--steps2 300] [--eval-interval 25] [--scenes 3000]
                                    [--work work_dirs/bench_recipe] [--figure benchmarks/recipe_ablation.png]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARMS = {"from stage 1": "stage1", "from base": "base"}


def run_arms(args: argparse.Namespace) -> dict[str, Path]:
    """Both recipe runs at once; the tensorboard folder of each arm's stage 2."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORK", "CHAINS", "LAST_STAGE", "STAGE2_FROM")}
    env.update(CHAINS="images", LAST_STAGE="stage2", STEPS1=str(args.steps1), STEPS2=str(args.steps2),
               EVAL_INTERVAL=str(args.eval_interval), SCENES=str(args.scenes))
    procs, folders = {}, {}
    for arm, start in ARMS.items():
        work = Path(args.work).resolve() / start
        if work.exists() and not (work / ".made-by-recipe").exists():
            sys.exit(f"error: {work} exists and was not made by examples/recipe.sh; choose another --work")
        work.parent.mkdir(parents=True, exist_ok=True)
        log = open(work.with_suffix(".log"), "w")
        procs[arm] = (subprocess.Popen(["bash", str(REPO / "examples" / "recipe.sh")],
                                       env={**env, "WORK": str(work), "STAGE2_FROM": start},
                                       stdout=log, stderr=subprocess.STDOUT), log)
        folders[arm] = work / "images" / "tensorboard" / "stage2"
    for arm, (proc, log) in procs.items():
        if proc.wait() != 0:
            sys.exit(f"error: the {arm!r} run failed; see {log.name}")
        log.close()
    return folders


def caption_curves(folders: dict[str, Path]) -> dict[str, list[tuple[int, float]]]:
    """The held-out caption loss of each arm's stage 2, (step, loss) per evaluation."""
    from megatron_solo.training.curve import VAL_LOSS, read_scalars

    return {arm: read_scalars(folder, (VAL_LOSS,))[VAL_LOSS] for arm, folder in folders.items()}


def draw(curves: dict[str, list[tuple[int, float]]], path: Path, steps1: int) -> None:
    """Both curves in one picture (log-scale loss)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, points in curves.items():
        ax.plot(*zip(*points), marker="o", markersize=3, label=f"stage 2 {arm}")
    ax.set_yscale("log")
    ax.set_xlabel("stage-2 step")
    ax.set_ylabel("held-out caption loss (per token)")
    ax.set_title(f"SOLO stage-1 ablation, solo-tiny on CPU (stage 1: {steps1} steps)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Run both arms, print the curves side by side and the final ratio, write the figure."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps1", type=int, default=150)
    p.add_argument("--steps2", type=int, default=300)
    p.add_argument("--eval-interval", type=int, default=25)
    p.add_argument("--scenes", type=int, default=3000)
    p.add_argument("--work", default=str(REPO / "work_dirs" / "bench_recipe"))
    p.add_argument("--figure", default=str(REPO / "benchmarks" / "recipe_ablation.png"))
    args = p.parse_args()
    start = time.perf_counter()
    curves = caption_curves(run_arms(args))
    a, b = curves["from stage 1"], curves["from base"]
    print(f"{'step':>6} {'from stage 1':>14} {'from base':>12} {'base / stage 1':>15}")
    for (step, la), (_, lb) in zip(a, b):
        print(f"{step:>6} {la:>14.4f} {lb:>12.4f} {lb / la:>15.3f}")
    draw(curves, Path(args.figure), args.steps1)
    print(f"caption validation loss after {a[-1][0]} stage-2 steps: {a[-1][1]:.4f} from stage 1, {b[-1][1]:.4f} "
          f"from base; ratio base / stage 1 = {b[-1][1] / a[-1][1]:.3f} ({time.perf_counter() - start:.0f} s; "
          f"figure {args.figure})")


if __name__ == "__main__":
    main()
