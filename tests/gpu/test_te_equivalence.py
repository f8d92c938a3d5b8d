"""Transformer Engine against the local spec on the same imported weights.

One random HF Mistral imported once; the TE spec (thd packed attention) and the local spec (sbhd,
our document-masked attention) load its weights; the bf16 logits of a micro-batch of two packs
of several image/text documents are compared with an fp32 local-spec reference, with Mistral's
sliding window off and on; a pack gives what each of its documents gives alone; and the window
changes the result well beyond TE's error, so matching the reference under both shows it honoured.
On the smoke run the local spec in the thd layout stands in for TE.
"""

from __future__ import annotations

import dataclasses

import pytest

from tests.gpu.checks import BF16_TOL, rel_err, smoke
from tests.gpu.models import batches, copy_weights, documents_alone, logits, reference_config

pytestmark = pytest.mark.gpu

SEQ = 512 if smoke() else 1024  # shorter packs can hold only vision tokens
WINDOW = 16 if smoke() else 64
WINDOW_MARGIN = 3  # the window must change the reference by this many times TE's worst error


@pytest.fixture(scope="module")
def outputs(imported_mistral: str, transformer_engine: str, world1):
    """window -> logits of the fp32 reference, local bf16, TE bf16, and TE's documents one by one."""
    from megatron_solo.checkpoint.model_io import load_solo_model
    from megatron_solo.config import ParallelConfig
    from megatron_solo.model.builder import build_solo_model
    from megatron_solo.platform import init_parallel

    init_parallel(ParallelConfig(), seed=5)
    chunks, cfg = load_solo_model(imported_mistral, ParallelConfig())  # fp32, local spec
    b = batches(1, SEQ, 1)[0]
    cache: dict = {}

    def run(window: int | None) -> dict:
        if window not in cache:
            te_cfg = dataclasses.replace(cfg, sliding_window=window, transformer_impl=transformer_engine)
            models = {
                "fp32": build_solo_model(reference_config(cfg, window), ParallelConfig()),
                "local": build_solo_model(reference_config(cfg, window), ParallelConfig(), bf16=True),
                "te": build_solo_model(te_cfg, ParallelConfig(), bf16=True, packed_format="thd"),
            }
            for model in models.values():
                copy_weights(chunks[0], model)
                model.eval()
            cache[window] = {k: logits(m, b, cfg) for k, m in models.items()}
            cache[window]["alone"] = documents_alone(models["te"], b, cfg)
        return cache[window]

    return run


@pytest.mark.parametrize("windowed", [False, True], ids=["no_window", "window"])
def test_te_logits_match_the_fp32_reference(figures, outputs, windowed: bool):
    got = outputs(WINDOW if windowed else None)
    te = rel_err(got["te"], got["fp32"])
    figures.goal(f"<= {BF16_TOL:.0%} of the logit scale")
    figures.record(window=WINDOW if windowed else None, te_vs_fp32=te,
                   local_bf16_vs_fp32=rel_err(got["local"], got["fp32"]), te_vs_local_bf16=rel_err(got["te"], got["local"]))
    assert te <= BF16_TOL, f"TE bf16 logits off the fp32 reference by {te:.2%} of the logit scale"


@pytest.mark.parametrize("windowed", [False, True], ids=["no_window", "window"])
def test_a_pack_gives_what_its_documents_give_alone(figures, outputs, windowed: bool):
    got = outputs(WINDOW if windowed else None)
    alone = got["alone"]
    err = rel_err(got["te"][:1, : alone.shape[1]], alone)
    figures.goal(f"<= {BF16_TOL:.0%} of the logit scale")
    figures.record(window=WINDOW if windowed else None, pack_vs_documents_alone=err)
    assert err <= BF16_TOL, f"TE attends across documents: the pack is off its documents alone by {err:.2%}"


def test_te_honours_the_sliding_window(figures, outputs):
    plain, windowed = outputs(None), outputs(WINDOW)
    effect = rel_err(windowed["fp32"], plain["fp32"])
    worst = max(rel_err(o["te"], o["fp32"]) for o in (plain, windowed))
    figures.goal(f"> {WINDOW_MARGIN}x TE's error")
    figures.record(window=WINDOW, window_effect_fp32=effect, window_effect_te=rel_err(windowed["te"], plain["te"]),
                   worst_te_error=worst)
    # TE matching the reference under both windows shows the window honoured only if the
    # window moves the reference well beyond TE's error.
    assert effect > WINDOW_MARGIN * worst, f"the window changes the reference by {effect:.2%}, TE's error is {worst:.2%}"
