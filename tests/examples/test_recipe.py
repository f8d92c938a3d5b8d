"""examples/recipe.sh: the four stages chained at a few steps each, with and without images, and its table."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest
from PIL import Image

from megatron_solo.data.scenes import BACKGROUND
from tests.harness.paths import REPO, user_env
from tests.harness.warm_python import shared_server

STAGES = ("stage1", "stage2", "stage3", "sft")
SOURCES = ("digits", "captions", "vqa", "text", "conversations")


def _run(timeout: int = 1800, env: dict[str, str] | None = None, **script_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "examples" / "recipe.sh")], env={**(env or user_env()), **script_env},
                          capture_output=True, text=True, timeout=timeout)


def _first_loss(log) -> float:
    return float(re.search(r"^step 1/\d+ \| loss ([\d.]+)", log.read_text(), re.M).group(1))


@pytest.mark.multiprocess
def test_recipe_chains_four_stages_and_scores_vision_against_blanked_images(tmp_path, request, tmp_path_factory):
    work = tmp_path / "recipe"
    # each of the script's ~35 tool processes starts with torch, megatron-core and transformers already
    # imported, and an export's one-rank world runs in the tool's process (tests/harness/warm_python.py);
    # stage 1 is just long enough for the stages after it to start well below an untrained model's loss;
    # two items per source and benchmark give every number of the table
    knobs = dict(WORK=str(work), STEPS1="4", STEPS2="1", STEPS3="1", STEPS_SFT="1", SCENES="40", MAX_SAMPLES="2")
    with shared_server(request.config, tmp_path_factory).env(one_rank_worlds_here=True, **knobs) as env:
        proc = _run(env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = lines.index(next(x for x in lines if x.startswith("stage ")))
    assert lines[header].split() == ["stage", *SOURCES]
    for row, stage in zip(lines[header + 1:header + 5], STAGES):  # the table holds what the reports say
        reports = [json.loads((work / d / f"{stage}.json").read_text())["val_loss"] for d in ("images", "blanked")]
        cells = re.findall(r"([\d.]+) / ([\d.]+)", row)
        assert row.split()[0] == stage and len(cells) == len(SOURCES), row
        for (seen, blank), src in zip(cells, SOURCES):
            assert float(seen) == pytest.approx(reports[0][src]["loss"], abs=1e-3)
            assert float(blank) == pytest.approx(reports[1][src]["loss"], abs=1e-3)
    final = [json.loads((work / d / "sft.json").read_text()) for d in ("images", "blanked")]
    for what, part in (("multiple choice", lambda r: r["mcq"]["loglik"]),
                       ("short answers", lambda r: r["benchmarks"]["vqa"]["generate"])):
        line = next(x for x in lines if x.startswith(what))
        got = re.fullmatch(rf"{what} on 2 held-out scenes .*: ([\d.]+)% with images vs ([\d.]+)% with images "
                           r"blanked \(([+-][\d.]+) points\)", line)
        assert got, line
        want = [100 * part(r)["accuracy"] for r in final]
        assert [float(got[1]), float(got[2]), float(got[3])] == pytest.approx([*want, want[0] - want[1]], abs=0.06)
    # the instruction-tuned export is prompted with [INST], on the held-out scenes
    assert all(r["mcq"]["template"] == "chat" and r["benchmarks"]["vqa"]["template"] == "chat" for r in final)
    for d in ("images", "blanked"):
        # each stage starts from the one before: its first loss is far below the untrained model's (~11)
        first = [_first_loss(work / d / f"{stage}.log") for stage in STAGES]
        assert first[0] > 9 and max(first[1:]) < first[0] - 0.3, first
        assert json.loads((work / d / "hf" / "solo_export.json").read_text())["template"] == "chat"
    pictures = [np.asarray(Image.open(work / d / "raw/scenes/images/train_00000.png")) for d in ("images", "blanked")]
    assert (pictures[1] == BACKGROUND).all() and not (pictures[0] == BACKGROUND).all()
    digit = next((work / "blanked/raw/digits").rglob("*.png"))
    assert set(np.asarray(Image.open(digit)).ravel()) == {BACKGROUND[0]}


def test_recipe_checks_its_inputs_before_removing_anything(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    proc = _run(timeout=60, WORK=str(tmp_path))
    assert proc.returncode == 2 and "was not made by this script" in proc.stderr
    for env, said in ((dict(STEPS2="0"), "STEPS2=0"), (dict(CHAINS="images photos"), "CHAINS=images photos"),
                      (dict(LAST_STAGE="stage4"), "LAST_STAGE=stage4"), (dict(STAGE2_FROM="x"), "STAGE2_FROM=x")):
        proc = _run(timeout=60, WORK=str(tmp_path / "new"), **env)
        assert proc.returncode == 2 and said in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / "new").exists()
