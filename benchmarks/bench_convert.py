"""Conversion benchmark: peak RAM and wall time of HF -> Megatron -> HF on a ~1B Mistral-shaped model.

A random Mistral-shaped model (default: 22 layers, hidden 2048, 16 heads / 8 KV heads, FFN 5632,
vocab 32000: 1.1 B parameters, like TinyLlama) is written straight to sharded safetensors, one layer
at a time. Then it is imported (tools' import_hf, at --tp/--pp) and exported back to Fuyu format,
while a sampler thread records the memory of this process and all its children every 50 ms.
Memory is reported as a ratio to one fp32 copy of the weights (goal <= 1.3x):
- anon: Pss_Anon summed over processes (memory the conversion allocated; proportional, so pages
  shared copy-on-write by the checkpoint writer's forked helpers count once);
- pss: all of Pss (also counts mapped files: libraries, safetensors pages the kernel can drop).

Run: python benchmarks/bench_convert.py [--layers 22] [--tp 1] [--pp 1] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch


def _proc_mem(p: psutil.Process) -> tuple[int, int]:
    """(Pss_Anon, Pss) bytes: proportional set sizes, so pages shared by forked writers count once."""
    anon = total = 0
    try:
        with open(f"/proc/{p.pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss_Anon:"):
                    anon = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    total = int(line.split()[1]) * 1024
    except OSError:
        pass
    return anon, total


class MemorySampler:
    """Peak of (anon, anon + file) RSS summed over this process and its children."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak_anon, self.peak_rss, self._stop = interval, 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            anon = rss = 0
            for p in [me, *me.children(recursive=True)]:
                a, t = _proc_mem(p)
                anon, rss = anon + a, rss + t
            self.peak_anon, self.peak_rss = max(self.peak_anon, anon), max(self.peak_rss, rss)
            time.sleep(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def write_random_mistral(out: Path, layers: int, hidden: int, heads: int, kv: int, ffn: int, vocab: int) -> int:
    """A random Mistral checkpoint written layer by layer (one shard per layer); returns its fp32 bytes."""
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    head_dim = hidden // heads
    std = 0.02
    weight_map, total = {}, 0

    def shard(name: str, tensors: dict[str, torch.Tensor]) -> None:
        nonlocal total
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
        total += sum(t.numel() * 4 for t in tensors.values())

    shard("embed.safetensors", {"model.embed_tokens.weight": torch.randn(vocab, hidden) * std})
    for i in range(layers):
        p = f"model.layers.{i}."
        shard(f"layer{i:03d}.safetensors", {
            p + "self_attn.q_proj.weight": torch.randn(heads * head_dim, hidden) * std,
            p + "self_attn.k_proj.weight": torch.randn(kv * head_dim, hidden) * std,
            p + "self_attn.v_proj.weight": torch.randn(kv * head_dim, hidden) * std,
            p + "self_attn.o_proj.weight": torch.randn(hidden, heads * head_dim) * std,
            p + "mlp.gate_proj.weight": torch.randn(ffn, hidden) * std,
            p + "mlp.up_proj.weight": torch.randn(ffn, hidden) * std,
            p + "mlp.down_proj.weight": torch.randn(hidden, ffn) * std,
            p + "input_layernorm.weight": torch.ones(hidden),
            p + "post_attention_layernorm.weight": torch.ones(hidden),
        })
    shard("head.safetensors", {"model.norm.weight": torch.ones(hidden),
                               "lm_head.weight": torch.randn(vocab, hidden) * std})
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps({
        "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": hidden,
        "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "head_dim": head_dim, "vocab_size": vocab, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "sliding_window": None, "max_position_embeddings": 4096,
        "tie_word_embeddings": False, "hidden_act": "silu",
    }))
    return total


def main() -> None:
    """Build the model, import it, export it, print time and memory ratios."""
    from megatron_solo.config.parallel import ParallelConfig
    from megatron_solo.hf.exporter import export_checkpoint
    from megatron_solo.hf.importer import import_hf
    from megatron_solo.vocab import default_tokenizer_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=5632)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--work", help="scratch folder, new or empty (default: a temporary one, removed afterwards)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_convert_"))
    if work.exists() and any(work.iterdir()):
        sys.exit(f"error: --work {work} is not empty; give a new folder")
    try:
        t0 = time.perf_counter()
        size = write_random_mistral(work / "hf", args.layers, args.hidden, args.heads, args.kv_heads, args.ffn, 32000)
        print(f"model: {size / 4 / 1e9:.2f} B parameters, {size / 2**30:.2f} GiB fp32 "
              f"(written in {time.perf_counter() - t0:.0f} s)")
        base_anon, _ = _proc_mem(psutil.Process())
        rows = []
        for name, fn in (
            ("import", lambda: import_hf(work / "hf", work / "mg", ParallelConfig(args.tp, args.pp),
                                         tokenizer=default_tokenizer_path(), progress=False)),
            ("export", lambda: export_checkpoint(work / "mg", work / "fuyu", progress=False)),
        ):
            t = time.perf_counter()
            with MemorySampler() as mem:
                fn()
            wall = time.perf_counter() - t
            rows.append((name, wall, mem.peak_anon - base_anon, mem.peak_rss - base_anon))
        print(f"{'step':8s} {'wall s':>8s} {'peak anon GiB':>14s} {'ratio':>6s} {'peak pss GiB':>13s} {'ratio':>6s}")
        for name, wall, anon, rss in rows:
            print(f"{name:8s} {wall:8.1f} {anon / 2**30:14.2f} {anon / size:6.2f} {rss / 2**30:13.2f} {rss / size:6.2f}")
        print(f"(layout TP{args.tp} PP{args.pp}; ratios are to one fp32 copy of the weights; "
              f"this process's own {base_anon / 2**30:.2f} GiB excluded; goal <= 1.3)")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
