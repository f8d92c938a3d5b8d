"""An `energon prepare`-d dataset (made here with the megatron-energon package) reads back as a source equal to
what it was made from: captioning samples as the same tars read directly, VQA samples as the same
conversations in JSONL; another sample type is refused naming it."""

import json

import pytest

from megatron_solo.config.data import PreprocessConfig
from megatron_solo.data.input_types import UnreadableInput
from megatron_solo.data.preprocess import preprocess
from megatron_solo.data.shard_set import ShardSet
from tests.harness.data_sources import webdataset_folder, write_jsonl

pytest.importorskip("megatron.energon")


def _prepare(folder, sample_type: str, field_map: dict) -> None:
    """`energon prepare` as a user runs it (its own command, non-interactive), all shards in the train split."""
    from megatron.energon.tools.prepare import command

    command.main([str(folder), "--non-interactive", "--split-ratio", "1,0,0", "--sample-type", sample_type,
                  "--field-map", json.dumps(field_map), "--num-workers", "1", "--no-progress"],
                 standalone_mode=False)
    assert (folder / ".nv-meta" / "dataset.yaml").is_file()


def _run(tmp_path, name, **kw):
    return preprocess(PreprocessConfig(output=str(tmp_path / name), workers=0, **kw), progress=False)


def _samples(folder) -> list:
    shards = ShardSet(str(folder))
    return [(s.key, s.ids.tolist(), [im.blob for im in s.images]) for s in map(shards.read, range(len(shards)))]


def test_energon_captioning_and_vqa_datasets(tmp_path):
    caps = tmp_path / "caps"
    made = webdataset_folder(caps, shards=2, per_shard=3)
    _prepare(caps, "CaptioningSample", {"image": "jpg", "caption": "txt"})
    stats = _run(tmp_path, "from_energon", kind="caption", inputs=[str(caps)])
    assert stats["samples"] == len(made) == 6
    _run(tmp_path, "from_tars", kind="caption", inputs=[str(p) for p in sorted(caps.glob("*.tar"))])
    assert _samples(tmp_path / "from_energon") == _samples(tmp_path / "from_tars")

    vqa = tmp_path / "vqa"
    made = webdataset_folder(vqa, shards=1, per_shard=3, vqa=True)
    _prepare(vqa, "VQASample", {"image": "jpg", "context": "json[question]", "answers": "json[answer]"})
    _run(tmp_path, "vqa_energon", kind="conversation", inputs=[str(vqa)])
    rows = []
    for s in made:
        (tmp_path / f"{s['key']}.jpg").write_bytes(s["image"])
        rows.append({"image": f"{s['key']}.jpg", "conversations": [
            {"from": "human", "value": s["question"]}, {"from": "gpt", "value": s["answer"]}]})
    _run(tmp_path, "vqa_ref", kind="conversation", inputs=[str(write_jsonl(tmp_path / "vqa.jsonl", rows))])
    got, want = _samples(tmp_path / "vqa_energon"), _samples(tmp_path / "vqa_ref")
    assert len(got) == 3 and got == want

    with pytest.raises(UnreadableInput, match="energon dataset of VQASample; the caption reader takes "
                                              "CaptioningSample"):
        _run(tmp_path, "wrong", kind="caption", inputs=[str(vqa)])
    with pytest.raises(UnreadableInput, match="the text reader does not take energon inputs"):
        _run(tmp_path, "text", kind="text", inputs=[str(vqa)])
