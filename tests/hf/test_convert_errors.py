"""Bad conversion inputs fail with errors naming the file or field at fault."""

from __future__ import annotations

import json
import shutil

import pytest

from megatron_solo.checkpoint import CheckpointError
from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.hf.adapters import open_hf
from megatron_solo.hf.exporter import export_checkpoint
from megatron_solo.hf.importer import import_hf
from megatron_solo.hf.source import ConversionError
from megatron_solo.vocab import TokenizerMismatchError, check_solo_tokens, default_tokenizer_path


@pytest.fixture(scope="module")
def hf_dir(small_mistral_hf):
    """A small random Mistral saved in two or more shards (the session's; tests edit copies)."""
    return small_mistral_hf


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_config(directory, **fields):
    path = directory / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(fields)
    path.write_text(json.dumps(cfg))


def test_unsupported_architecture(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path / "gpt2")
    _edit_config(d, architectures=["GPT2LMHeadModel"])
    with pytest.raises(ConversionError, match=r"config\.json: field 'architectures'.*GPT2LMHeadModel"):
        open_hf(d)


@pytest.mark.parametrize("field,value,pattern", [
    ("intermediate_size", 100, r"config\.json: config implies .*mlp\.gate_proj"),
    ("hidden_size", 32, r"config\.json: field .*hidden_size"),
    ("num_hidden_layers", 1, r"config\.json: field 'num_hidden_layers' = 1"),
    ("vocab_size", 100, r"config\.json: field 'vocab_size' = 100"),
    ("rope_scaling", {"rope_type": "linear", "factor": 2.0}, r"config\.json: field 'rope_scaling'"),
])
def test_config_not_matching_weights(hf_dir, tmp_path, field, value, pattern):
    d = _copy(hf_dir, tmp_path / "bad")
    _edit_config(d, **{field: value})
    with pytest.raises(ConversionError, match=pattern):
        import_hf(d, tmp_path / "out", tokenizer=default_tokenizer_path(), progress=False)


def test_missing_shard(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path / "partial")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[-1]
    (d / victim).unlink()
    with pytest.raises(ConversionError, match=rf"index\.json: names shard\(s\) \['{victim}'\] that are missing"):
        open_hf(d)


def test_no_weights(hf_dir, tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    shutil.copy(hf_dir / "config.json", d / "config.json")
    with pytest.raises(ConversionError, match="neither model.safetensors nor"):
        open_hf(d)


def _plain_tokenizer_dir(tmp_path):
    d = tmp_path / "plain_tok"
    d.mkdir()
    shutil.copy(default_tokenizer_path(), d / "tokenizer.model")
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "legacy": False}))
    return d


def test_tokenizer_without_solo_tokens(tmp_path):
    d = _plain_tokenizer_dir(tmp_path)
    with pytest.raises(TokenizerMismatchError, match=rf"{d}: tokenizer lacks the SOLO tokens"):
        check_solo_tokens(d)


@pytest.fixture(scope="module")
def imported(hf_dir, conversions_here, tmp_path_factory):
    """hf_dir imported at TP2 PP1 (a two-rank world); the exports of the tests that read it run in this process."""
    out = tmp_path_factory.mktemp("mg") / "ckpt"
    import_hf(hf_dir, out, ParallelConfig(tensor_parallel=2), tokenizer=default_tokenizer_path(), progress=False)
    return out


@pytest.mark.multiprocess
def test_solo_release_with_plain_tokenizer(imported, tmp_path):
    release = export_checkpoint(imported, tmp_path / "solo", fmt="solo", progress=False)
    for f in release.glob("tokenizer*"):
        f.unlink()
    shutil.copy(_plain_tokenizer_dir(tmp_path) / "tokenizer_config.json", release / "tokenizer_config.json")
    shutil.copy(default_tokenizer_path(), release / "tokenizer.model")
    with pytest.raises(TokenizerMismatchError, match="tokenizer lacks the SOLO tokens"):
        import_hf(release, tmp_path / "again", progress=False)


@pytest.mark.multiprocess
def test_export_with_tokenizer_lacking_solo_tokens(imported, tmp_path):
    with pytest.raises(TokenizerMismatchError, match=r"solo_tokenizer\.json: missing"):
        export_checkpoint(imported, tmp_path / "out", tokenizer_dir=_plain_tokenizer_dir(tmp_path), progress=False)


@pytest.mark.multiprocess
@pytest.mark.parametrize("field,value", [("tensor_parallel", 4), ("pipeline_parallel", 2)])
def test_the_checkpoints_own_layout_wins_over_the_save_roots(imported, tmp_path, field, value):
    ckpt = _copy(imported, tmp_path / "ckpt")
    meta = json.loads((ckpt / "solo_model.json").read_text())
    meta[field] = value  # the root's file describes a newer checkpoint at another layout
    (ckpt / "solo_model.json").write_text(json.dumps(meta))
    assert export_checkpoint(ckpt, tmp_path / "out", progress=False).is_dir()


@pytest.mark.multiprocess
def test_model_config_not_matching_checkpoint(imported, tmp_path):
    ckpt = _copy(imported, tmp_path / "ckpt")
    meta = json.loads((ckpt / "solo_model.json").read_text())
    meta["model"]["hidden_size"] = 128
    (ckpt / "solo_model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"solo_model\.json: field model\.hidden_size/vocab_size = 128"):
        export_checkpoint(ckpt, tmp_path / "out", progress=False)
