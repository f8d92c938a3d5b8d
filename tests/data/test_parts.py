"""A preprocessing job as N parts: the union of the parts is the one-process run byte for byte (held-out
split included), a finished part is not redone, a killed part redoes only its own missing shards, and the
folder is one dataset (one stats.json) only when every part finished."""

import json

import pytest

from megatron_solo.config.data import PreprocessConfig
from megatron_solo.data import preprocess as pre
from megatron_solo.data.parts import Part, parse_part, part_from_env
from megatron_solo.data.shard_set import ShardSet
from megatron_solo.data.shards import ShardError
from megatron_solo.errors import UserInputError
from tests.harness.data_sources import classification_folder


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    folder, names = classification_folder(root / "train")
    return dict(kind="classification", inputs=[str(folder)], class_names=str(names), shard_size=2, holdout=3,
                max_skip_share=1.0, workers=0)


def _files(folder) -> dict:
    """Relative path -> bytes of every shard and index (training and held-out folders)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("shard-*")) if p.is_file()}


def _part(source, out, part, **kw):
    return pre.preprocess(PreprocessConfig(output=str(out), part=part, **{**source, **kw}), progress=False,
                          environ={})


def test_parts_union_is_the_one_process_run(source, tmp_path):
    whole = pre.preprocess(PreprocessConfig(output=str(tmp_path / "whole"), **source), progress=False)
    out = tmp_path / "parts"
    seen = []
    for i in (2, 0, 1):  # any order
        stats = _part(source, out, f"{i}/3")
        seen.append(stats["shards"])
        assert stats["part"] == f"{i}/3"
    assert stats["parts_missing"] == [] and sum(seen) == whole["shards"]
    assert _files(out) == _files(tmp_path / "whole")  # same names, same keys, same bytes; held-out included
    merged = json.loads((out / "stats.json").read_text())
    assert {k: v for k, v in merged.items() if k != "resumed_shards"} == \
        {k: v for k, v in json.loads((tmp_path / "whole" / "stats.json").read_text()).items()
         if k != "resumed_shards"}
    assert json.loads((out / "heldout" / "stats.json").read_text())["samples"] == whole["heldout"]["samples"]
    assert len(ShardSet(str(out))) == whole["samples"]
    again = pre.preprocess(PreprocessConfig(output=str(out), merge=True, **source), progress=False, environ={})
    assert again["samples"] == whole["samples"]


def test_unfinished_parts_are_refused_and_a_killed_part_redoes_only_its_shards(source, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _part(source, out, "0/3")
    with pytest.raises(ShardError, match="part\\(s\\) 1, 2 have not finished"):
        ShardSet(str(out))
    with pytest.raises(UserInputError, match="part\\(s\\) 1, 2 of 3"):
        pre.preprocess(PreprocessConfig(output=str(out), merge=True, **source), progress=False, environ={})
    assert not (out / "stats.json").exists()
    with pytest.raises(UserInputError, match="3-part split"):
        _part(source, out, "0/2")
    mine_before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}

    real, calls = pre.process_shard, []

    def dies_on_second(k, records, folder, cfg=None):
        calls.append(k)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the part is killed while building its second shard
        return real(k, records, folder, cfg)

    monkeypatch.setattr(pre, "process_shard", dies_on_second)
    (out / "shard-000000.tar.tmp").write_bytes(b"part 0 is writing this")  # another part's, in flight
    with pytest.raises(KeyboardInterrupt):
        _part(source, out, "1/3")
    assert not Part(1, 3).marker(out).exists()
    first = calls[0]
    monkeypatch.setattr(pre, "process_shard", real)
    (out / f"shard-{calls[1]:06d}.tar.tmp").write_bytes(b"left by the killed part")
    done_first = (out / f"shard-{first:06d}.tar").stat().st_mtime_ns
    stats = _part(source, out, "1/3")
    assert stats["resumed_shards"] == 1  # the shard finished before the kill was kept
    assert (out / f"shard-{first:06d}.tar").stat().st_mtime_ns == done_first
    assert (out / "shard-000000.tar.tmp").exists()  # part 0's file: not this part's to remove
    assert not (out / f"shard-{calls[1]:06d}.tar.tmp").exists()
    assert {p: t for p, t in ((p.name, p.stat().st_mtime_ns) for p in out.glob("shard-*.tar"))
            if p in mine_before} == mine_before  # part 0's shards untouched
    (out / "shard-000000.tar.tmp").unlink()

    monkeypatch.setattr(pre, "process_shard", lambda *a, **k: pytest.fail("a finished part rebuilt a shard"))
    assert _part(source, out, "1/3")["finished_before"]  # finished: nothing redone
    monkeypatch.setattr(pre, "process_shard", real)
    assert _part(source, out, "2/3")["parts_missing"] == []
    assert (out / "stats.json").exists() and (out / "heldout" / "stats.json").exists()


def test_part_spellings_and_slurm_array_tasks():
    assert parse_part("1/3") == Part(1, 3) and str(Part(1, 3)) == "1/3"
    for bad in ("3/3", "1-3", "0/0", "a/b"):
        with pytest.raises(UserInputError, match="--part"):
            parse_part(bad)
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "4",
           "SLURM_ARRAY_TASK_MAX": "6"}
    assert part_from_env(env) == Part(1, 3)  # --array=4-6: task 5 is the second part
    assert part_from_env({"SLURM_JOB_ID": "7"}) is None
    with pytest.raises(UserInputError, match="not 3 consecutive"):
        part_from_env({**env, "SLURM_ARRAY_TASK_MAX": "8"})  # --array=4-8:2
    assert [k for k in range(7) if Part(1, 3).owns(k)] == [1, 4]


@pytest.mark.parametrize("array, message", [
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "0"}, "SLURM_ARRAY_TASK_COUNT=0: a Slurm array has at"),
    ({"SLURM_ARRAY_TASK_ID": "abc", "SLURM_ARRAY_TASK_COUNT": "2"}, "SLURM_ARRAY_TASK_ID='abc': expected a whole"),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "2"}, "SLURM_ARRAY_TASK_ID=5 is outside the array's"),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": ""}, "SLURM_ARRAY_TASK_MIN=''"),
])
def test_a_slurm_array_environment_that_names_no_part_is_one_line(array, message, source, tmp_path, capfd,
                                                                   monkeypatch):
    from tests.harness.tool_runs import run_here

    for key, value in array.items():
        monkeypatch.setenv(key, value)
    run = run_here(capfd, "preprocess_data.py", "--kind", "classification", "--input", source["inputs"][0],
                   "--output", tmp_path / "out", "--workers", "0", "--quiet")
    assert run.returncode == 2 and message in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("count", [1, 2, 5])
def test_every_record_in_exactly_one_part_whatever_n(tmp_path, count):
    from tests.harness.data_sources import write_jsonl

    src = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"document {i} " * (1 + i % 4)} for i in range(17)])
    kw = dict(kind="text", inputs=[str(src)], shard_size=3, holdout=4, workers=0)
    pre.preprocess(PreprocessConfig(output=str(tmp_path / "whole"), **kw), progress=False, environ={})
    for i in range(count):
        _part(kw, tmp_path / "parts", f"{i}/{count}")
    assert _files(tmp_path / "parts") == _files(tmp_path / "whole")
    keys = [k for folder in ("parts", "parts/heldout") for k in ShardSet(str(tmp_path / folder)).indexes
            for k in k.keys.tolist()]
    assert sorted(keys) == [f"{i:010d}" for i in range(17)]  # each record once, in the training or held-out part
