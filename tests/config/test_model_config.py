"""SoloModelConfig's decoder fields (head width, q/k norms, RoPE scaling): stored, overridden, and absent from
the solo_model.json of older checkpoints, which still load as the model they described."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from megatron_solo.checkpoint.metadata import model_config, read_metadata, write_metadata
from megatron_solo.config.model import RopeScaling, model_preset, with_overrides
from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.errors import UserInputError
from megatron_solo.model.gpt import gpt_kwargs
from megatron_solo.model.transformer_config import build_transformer_config
from tests.harness.ckpt_workers import megatron_logits
from tests.harness.worlds import run_world

# written by write_metadata before SoloModelConfig had head_dim, qk_layernorm and rope_scaling
OLDER = Path(__file__).parent / "data" / "older_solo_model.json"
NEW_FIELDS = ("head_dim", "qk_layernorm", "rope_scaling")


def test_an_older_solo_model_json_reads_as_the_model_it_described():
    meta, _ = read_metadata(OLDER.parent, OLDER)
    assert not set(NEW_FIELDS) & set(meta["model"])
    cfg = model_config(meta)
    assert (cfg.head_dim, cfg.kv_channels, cfg.qk_layernorm, cfg.rope_scaling) == (None, 16, False, None)
    config = build_transformer_config(cfg, ParallelConfig())
    assert (config.kv_channels, config.qk_layernorm) == (16, False)
    assert not hasattr(config, "yarn_rotary_scaling_factor")
    kwargs = gpt_kwargs(cfg, ParallelConfig())
    assert kwargs["position_embedding_type"] == "rope" and "rope_scaling" not in kwargs


def test_an_older_checkpoint_loads_with_the_same_logits(world1, tmp_path):
    run_world(_save_and_run, 1, str(tmp_path))
    shutil.copy(OLDER, tmp_path / "solo_model.json")  # the checkpoint's description as the older code wrote it
    run_world(megatron_logits, 1, str(tmp_path), str(tmp_path / "ids.pt"), str(tmp_path / "loaded.pt"), 1)
    assert torch.equal(torch.load(tmp_path / "loaded.pt"), torch.load(tmp_path / "built.pt"))


def _save_and_run(root: str) -> None:
    """Worker (one rank): build the older file's model, save it as a checkpoint of ROOT, write logits of some ids."""
    from megatron_solo.checkpoint.state import TrainState, save_checkpoint
    from megatron_solo.model.builder import solo_provider
    from megatron_solo.model.chunks import build_model_chunks
    from megatron_solo.platform import init_parallel
    from tests.harness.ckpt_workers import forward_logits

    parallel = ParallelConfig()
    init_parallel(parallel, seed=3)
    cfg = model_config(json.loads(OLDER.read_text()))
    chunks = build_model_chunks(solo_provider(cfg, parallel), parallel)
    save_checkpoint(root, TrainState(iteration=1), chunks)
    ids = torch.randint(0, 32000, (1, 24), generator=torch.Generator().manual_seed(0))
    torch.save(ids, Path(root) / "ids.pt")
    torch.save(forward_logits(chunks[0].eval(), cfg, ids, None), Path(root) / "built.pt")


def test_rope_scaling_stored_and_read_back(tmp_path):
    cfg = model_preset("solo-tiny", head_dim=32, qk_layernorm=True, rope_scaling=RopeScaling("yarn", 4.0, 256))
    write_metadata(tmp_path, cfg, ParallelConfig())
    assert model_config(read_metadata(tmp_path)[0]) == cfg
    config = build_transformer_config(cfg, ParallelConfig())
    assert (config.kv_channels, config.qk_layernorm, config.yarn_rotary_scaling_factor) == (32, True, 4.0)


def test_rope_scaling_overridden_as_a_dict_or_refused():
    base = model_preset("solo-tiny")
    cfg = with_overrides(base, {"rope_scaling": {"kind": "llama3", "factor": 8.0, "original_max_positions": 256}},
                         "solo-tiny")
    assert cfg.rope_scaling == RopeScaling("llama3", 8.0, 256)
    assert dataclasses.asdict(cfg)["rope_scaling"]["low_freq_factor"] == 1.0
    with pytest.raises(UserInputError, match="solo-tiny with overrides .*'ntk'"):
        with_overrides(base, {"rope_scaling": {"kind": "ntk", "factor": 2.0, "original_max_positions": 256}},
                       "solo-tiny")
    with pytest.raises(UserInputError, match="solo-tiny with overrides .*unexpected keyword argument 'alpha'"):
        with_overrides(base, {"rope_scaling": {"kind": "yarn", "factor": 2.0, "original_max_positions": 8,
                                               "alpha": 1}}, "solo-tiny")
    with pytest.raises(UserInputError, match="head_dim must be even"):
        with_overrides(base, {"head_dim": 15}, "solo-tiny")
