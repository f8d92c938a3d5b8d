"""The sbatch scripts run by hand, outside a Slurm job: one line saying how to submit them, exit 2."""

from __future__ import annotations

import subprocess

import pytest

from tests.harness.paths import REPO

SCRIPTS = sorted((REPO / "examples" / "slurm").glob("*.sbatch"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_script_run_outside_slurm_says_to_submit_it(script, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SOLO_REPO": str(REPO)}  # no SLURM_* variable
    run = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stdout == "", (run.stdout, run.stderr)
    assert run.stderr == f"solo: {script.name} runs inside a Slurm job: submit it with sbatch (see its first lines)\n"
