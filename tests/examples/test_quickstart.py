"""examples/quickstart.sh, end to end on a short schedule, and its care for folders it did not make."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.harness.paths import REPO

LAUNCHER = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_STEP_NUM_TASKS")

pytestmark = pytest.mark.multiprocess


def _run(**env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in LAUNCHER}
    return subprocess.run(["bash", str(REPO / "examples" / "quickstart.sh")], env={**base, **env},
                          capture_output=True, text=True, timeout=900)


def test_quickstart_trains_scores_exports_and_answers(tmp_path):
    work = tmp_path / "qs"
    proc = _run(WORK=str(work), STEPS="20")
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("held-out accuracy:"))
    assert re.fullmatch(r"held-out accuracy: \d+\.\d\d% \(SOLO, 359 images\) vs \d+\.\d\d% \(logistic regression "
                        r"on the same pixels, trained on 1438\)", line), line
    report = json.loads((work / "eval.json").read_text())["classification"]
    assert f"{100 * report['top1']:.2f}%" in line and f"{100 * report['logreg_baseline']['accuracy']:.2f}%" in line
    assert (work / "tensorboard" / "loss_curve.png").stat().st_size > 0
    assert re.search(r"held-out image of '\d' .*asked to complete 'digit', the exported model says '.+'", proc.stdout)
    again = _run(WORK=str(work), STEPS="1")  # its own folder is replaced
    assert again.returncode == 0, again.stderr[-3000:]


def test_quickstart_leaves_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    proc = _run(WORK=str(tmp_path), STEPS="1")
    assert proc.returncode == 2 and "was not made by this script" in proc.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"
