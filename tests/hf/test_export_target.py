"""Export never touches the checkpoint or files that are not a previous export; it is published whole.

Also: a run resumed at another layout still exports (solo_model.json follows the newest save), and the
export records the prompt template the checkpoint was trained with.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from megatron_solo.hf.exporter import EXPORT_META, IN_PROGRESS, export_checkpoint
from megatron_solo.hf.source import ConversionError
from tests.harness.ckpt_models import load_safetensors_dir
from tests.harness.ckpt_workers import resave
from tests.harness.worlds import run_world

# The shared TP2 PP2 import starts worker processes (gloo), the exports and the TP1 re-save run in this
# process; not part of the one-GPU check.
pytestmark = [pytest.mark.multiprocess, pytest.mark.usefixtures("conversions_here")]


@pytest.fixture(scope="module")
def saved(small_mistral_tp2pp2, tmp_path_factory):
    """A small Mistral imported at TP2 PP2 (a copy of the session's, as the tests write beside it):
    (save root, its iter_0000000 folder)."""
    root = shutil.copytree(small_mistral_tp2pp2[0], tmp_path_factory.mktemp("export_target") / "runs" / "ckpt")
    return root, root / "iter_0000000"


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("target", ["root", "iter", "parent", "inside_iter"])
def test_out_holding_or_inside_the_checkpoint_is_refused(saved, target):
    root, ckpt = saved
    (root.parent / "notes.txt").write_text("unrelated")  # beside the save root: must survive
    out = {"root": root, "iter": ckpt, "parent": root.parent, "inside_iter": ckpt / "hf"}[target]
    before = _tree(root.parent)
    for checkpoint in (root, ckpt):
        with pytest.raises(ConversionError, match="would replace or write into the checkpoint"):
            export_checkpoint(checkpoint, out, progress=False)
    assert _tree(root.parent) == before
    assert not (ckpt / "hf").exists()


def test_foreign_folders_are_refused_and_kept(saved, tmp_path):
    root, _ = saved
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(ConversionError, match=f"--out {out} exists and is not a previous export"):
        export_checkpoint(root, out, progress=False)
    assert (out / "thesis.tex").read_text() == "years of work"
    # hidden build folders of that name that an export did not make are not removed either
    for hidden in (".new.partial-export", ".new.old-export"):
        foreign = tmp_path / hidden
        foreign.mkdir()
        (foreign / "keep.txt").write_text("mine")
        with pytest.raises(ConversionError, match="was not written by an export"):
            export_checkpoint(root, tmp_path / "new", progress=False)
        assert (foreign / "keep.txt").read_text() == "mine"
        shutil.rmtree(foreign)
    assert not (tmp_path / "new").exists()


def test_reexport_replaces_a_previous_export_and_survives_an_interrupted_one(saved, tmp_path):
    root, ckpt = saved
    (tmp_path / "notes.txt").write_text("unrelated")
    out = export_checkpoint(root, tmp_path / "hf", progress=False)
    first = _tree(out)
    assert json.loads((out / EXPORT_META).read_text())["template"] == "plain"
    assert not (out / IN_PROGRESS).exists()
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert len(set(modes.values())) == 1, modes  # the weights are as readable as the config beside them
    (out / "stale.txt").write_text("from the previous export")
    # an export killed while building, and one killed while publishing, left their hidden folders
    killed = tmp_path / ".hf.partial-export"
    killed.mkdir()
    (killed / IN_PROGRESS).touch()
    (killed / "model-00001.safetensors").write_bytes(b"half written")
    (tmp_path / ".hf.old-export").mkdir()
    (tmp_path / ".hf.old-export" / EXPORT_META).write_text("{}")
    # the SFT side records the chat template in solo_model.json; re-export from the iter folder
    meta = json.loads((root / "solo_model.json").read_text())
    chat_meta = tmp_path / "solo_model.json"
    chat_meta.write_text(json.dumps({**meta, "template": "chat"}))
    again = export_checkpoint(ckpt, tmp_path / "hf", model_meta=chat_meta, progress=False)
    assert again == out
    second = _tree(out)
    # a file no export wrote (the user's) is kept; the export's own files are replaced
    assert second.pop("stale.txt") == b"from the previous export"
    assert json.loads(second.pop(EXPORT_META))["template"] == "chat"
    first.pop(EXPORT_META)
    assert second == first  # same weights, config, tokenizer and processor files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "notes.txt", "solo_model.json"]


def test_export_after_resuming_at_another_layout(saved, tmp_path):
    """Saved at TP2 PP2 (solo_model.json says so), resumed and saved at TP1: the export reads the TP1 checkpoint."""
    root = shutil.copytree(saved[0], tmp_path / "ckpt")
    assert json.loads((root / "solo_model.json").read_text())["tensor_parallel"] == 2
    run_world(resave, 1, str(root), 1, 1)
    meta = json.loads((root / "solo_model.json").read_text())
    assert (meta["tensor_parallel"], meta["pipeline_parallel"]) == (1, 1)
    out = export_checkpoint(root, tmp_path / "hf", progress=False)
    assert json.loads((out / EXPORT_META).read_text())["checkpoint"].endswith("iter_0000001")
    reference = export_checkpoint(saved[0], tmp_path / "hf_tp2", progress=False)
    a, b = load_safetensors_dir(out), load_safetensors_dir(reference)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_damaged_checkpoint_is_one_line_from_the_worker(saved, tmp_path):
    """A shard file missing is found by the export worker: still one line on stderr, exit 2."""
    from tests.harness.ckpt_tools import one_line, run_cli

    root = shutil.copytree(saved[0], tmp_path / "ckpt")
    victim = sorted((root / "iter_0000000").glob("*.distcp"))[-1]
    victim.unlink()
    proc = run_cli("export_to_hf.py", "--checkpoint", root, "--out", tmp_path / "hf", timeout=300)
    one_line(proc, "iter_0000000: cannot read the checkpoint", victim.name)
    assert not (tmp_path / "hf").exists() and not (tmp_path / ".hf.partial-export").exists()
