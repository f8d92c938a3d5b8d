"""A save root whose latest file is missing (a copy that skipped it) is read at its newest complete checkpoint by
every reader, as a resumed run reads it, saying which: export, evaluation, --init-from."""

from __future__ import annotations

import shutil

from megatron_solo.checkpoint.layout import LATEST_FILE, resolve_checkpoint
from tests.harness.tool_runs import run_here


def test_export_takes_the_newest_complete_checkpoint_of_a_root_without_its_latest_file(
        sharp_mistral, conversions_here, tmp_path, capfd):
    root = tmp_path / "copied"
    shutil.copytree(sharp_mistral["mg"], root, ignore=shutil.ignore_patterns(LATEST_FILE))
    (root / "iter_0000007.partial").mkdir()  # an unfinished save is never taken
    note = f"note: {root} has no {LATEST_FILE}; taking its newest complete checkpoint iter_0000000"
    run = run_here(capfd, "export_to_hf.py", "--checkpoint", root, "--out", tmp_path / "hf")
    assert run.returncode == 0 and run.stderr.count(note) == 1, run.stderr
    for weights in sharp_mistral["export"].glob("*.safetensors"):  # the same model as from the full root
        assert (tmp_path / "hf" / weights.name).read_bytes() == weights.read_bytes()
    capfd.readouterr()
    assert resolve_checkpoint(root) == (root, root / "iter_0000000")  # evaluation's reader and --init-from's
    shutil.rmtree(root / "iter_0000000")
    run = run_here(capfd, "export_to_hf.py", "--checkpoint", root, "--out", tmp_path / "none")
    assert run.returncode == 2 and "nor a save root with latest_checkpointed_iteration.txt or a complete" in run.stderr
