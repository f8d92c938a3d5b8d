"""examples/quickstart.sh, end to end on a short schedule, and its care for folders it did not make."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.harness.paths import REPO, user_env
from tests.harness.warm_python import shared_server


def _run(env: dict[str, str] | None = None, **script_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "examples" / "quickstart.sh")], env={**(env or user_env()), **script_env},
                          capture_output=True, text=True, timeout=900)


@pytest.mark.multiprocess
def test_quickstart_replaces_its_folder_trains_scores_exports_and_answers(tmp_path, request, tmp_path_factory):
    work = tmp_path / "qs"
    work.mkdir()
    (work / ".made-by-quickstart").touch()  # a folder an earlier run made: replaced, with what it held
    (work / "stale.txt").write_text("from the earlier run")
    # its tool processes start with torch, megatron-core and transformers imported, and the export's one-rank
    # world runs in the tool's process (tests/harness/warm_python.py); 8 steps teach the captions' form, so
    # the exported model answers with a word, not an end of text
    warm = shared_server(request.config, tmp_path_factory)
    with warm.env(one_rank_worlds_here=True, WORK=str(work), STEPS="8") as env:
        proc = _run(env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("held-out accuracy:"))
    assert re.fullmatch(r"held-out accuracy: \d+\.\d\d% \(SOLO, 359 images\) vs \d+\.\d\d% \(logistic regression "
                        r"on the same pixels, trained on 1438\)", line), line
    report = json.loads((work / "eval.json").read_text())["classification"]
    assert f"{100 * report['top1']:.2f}%" in line and f"{100 * report['logreg_baseline']['accuracy']:.2f}%" in line
    assert (work / "tensorboard" / "loss_curve.png").stat().st_size > 0
    assert re.search(r"held-out image of '\d' .*asked to complete 'digit', the exported model says '.+'", proc.stdout)
    assert not (work / "stale.txt").exists() and (work / ".made-by-quickstart").is_file()


def test_quickstart_leaves_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    proc = _run(WORK=str(tmp_path), STEPS="1")
    assert proc.returncode == 2 and "was not made by this script" in proc.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _script_copy(tmp_path):
    """The quick start in a repository of its own (its default WORK lives under that repository)."""
    repo = tmp_path / "repo"
    (repo / "examples").mkdir(parents=True)
    (repo / "examples" / "quickstart.sh").write_text((REPO / "examples" / "quickstart.sh").read_text())
    return repo


def _run_copy(repo, **env: str) -> subprocess.CompletedProcess:
    base = user_env(drop=("WORK", "DATA", "STEPS"))
    return subprocess.run(["bash", str(repo / "examples" / "quickstart.sh")], env={**base, **env},
                          capture_output=True, text=True, timeout=60)


def test_quickstart_checks_its_inputs_before_removing_anything(tmp_path):
    repo = _script_copy(tmp_path)
    default = repo / "work_dirs" / "quickstart"
    default.mkdir(parents=True)
    (default / "notes.txt").write_text("mine")  # the default WORK, but not made by the quick start
    proc = _run_copy(repo, STEPS="1")
    assert proc.returncode == 2 and "was not made by this script" in proc.stderr
    assert (default / "notes.txt").read_text() == "mine"
    (default / ".made-by-quickstart").touch()  # one it made: a missing DATA is refused before it is replaced
    proc = _run_copy(repo, DATA=str(tmp_path / "missing"))
    assert proc.returncode == 2 and "missing does not exist" in proc.stderr
    assert (default / "notes.txt").read_text() == "mine"
    proc = _run_copy(repo, STEPS="0")
    assert proc.returncode == 2 and "STEPS=0" in proc.stderr and "save_interval" not in proc.stderr
    assert (default / "notes.txt").read_text() == "mine"


def test_quickstart_refuses_data_inside_work_and_a_single_class(tmp_path):
    repo = _script_copy(tmp_path)
    work = tmp_path / "w"
    (work / "mydata" / "cats").mkdir(parents=True)
    (work / "mydata" / "dogs").mkdir()
    (work / ".made-by-quickstart").touch()
    proc = _run_copy(repo, WORK=str(work), DATA=str(work / "mydata"))
    assert proc.returncode == 2 and "is inside WORK" in proc.stderr
    assert (work / "mydata" / "cats").is_dir()
    single = tmp_path / "one_class"
    (single / "cats").mkdir(parents=True)
    proc = _run_copy(repo, WORK=str(tmp_path / "w2"), DATA=str(single))
    assert proc.returncode == 2 and "fewer than two class folders" in proc.stderr
    assert not (tmp_path / "w2").exists()
