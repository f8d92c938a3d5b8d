"""The loss-spike policy: the detector against a plain median/MAD, and skip and rewind in real runs."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from megatron_solo.checkpoint.train_state import TrainState
from megatron_solo.config.train import OptimConfig, TrainConfig
from megatron_solo.training.spike import SpikePolicy, robust_level
from tests.harness.worlds import run_world

# the runs below: detection from step 5 (warm-up 1, window 3); a wide margin: only the injected 30x is a spike
SPIKE = dict(spike_window=3, spike_mad_factor=100.0)


VOCAB = 33031  # a loss above 2 x ln(VOCAB) = 20.8 is a diverged run's


def _policy(on_spike: str, warmup: int = 2, budget: int = 10) -> SpikePolicy:
    return SpikePolicy(TrainConfig(on_spike=on_spike, spike_window=4, spike_mad_factor=3.0, max_skipped_steps=budget,
                                   optim=OptimConfig(warmup_steps=warmup)), VOCAB)


def test_robust_level_is_median_plus_k_mads():
    losses = [2.0, 2.1, 1.9, 2.4, 2.05]
    median = float(np.median(losses))
    mad = float(np.median(np.abs(np.array(losses) - median)))
    assert robust_level(losses, 4.0) == pytest.approx((median, mad, median + 4.0 * mad))
    assert robust_level([3.0] * 5, 2.0)[1] == pytest.approx(3e-3)  # equal losses: the MAD floor


def test_detection_waits_for_the_warm_up_and_a_full_window_and_a_warned_spike_joins_it():
    policy, state = _policy("warn"), TrainState()
    assert [policy.check(i, v, state) for i, v in enumerate([19.0, 15.0, 5.0, 5.1, 4.9, 5.2], 1)] == [None] * 6
    assert state.spike_history == [5.0, 5.1, 4.9, 5.2]  # the warm-up's steps 1 and 2 not taken
    spike = policy.check(7, 9.0, state)
    assert spike.iteration == 7 and spike.threshold == pytest.approx(5.05 + 3 * 0.1)
    assert state.spikes == 1 and state.skipped_steps == 0 and state.spike_history == [5.1, 4.9, 5.2, 9.0]


def test_a_skipped_spike_stays_out_of_the_window_and_counts_against_the_budget():
    from megatron_solo.training.guard import DivergenceError

    policy, state = _policy("skip", warmup=0, budget=1), TrainState(spike_history=[5.0, 5.1, 4.9, 5.2])
    assert policy.check(5, 9.0, state) is not None and state.skipped_steps == 1
    assert state.spike_history == [5.0, 5.1, 4.9, 5.2]
    with pytest.raises(DivergenceError, match=r"step 6: loss spike 9.*over --max-skipped-steps 1"):
        policy.check(6, 9.0, state)


def test_a_run_diverging_from_its_first_steps_is_caught_without_a_window():
    from megatron_solo.training.guard import DivergenceError

    ceiling = 2 * math.log(VOCAB)
    warned, state = _policy("warn", warmup=3), TrainState()
    losses = [10.4, 15.0, 2e3, 1e6, 1e6, 1e6, 1e6]  # a learning rate far too high: finite, and rising from step 2
    spikes = [warned.check(i, v, state) for i, v in enumerate(losses, 1)]
    assert [s is not None for s in spikes] == [False, False, True, True, True, True, True]
    assert spikes[2].diverged and spikes[2].threshold == pytest.approx(ceiling)
    assert spikes[2].describe(3.0, 4).startswith(f"step 3: loss spike 2000 above {ceiling:.4g}, 2 x the loss of a")
    assert spikes[-1].diverged  # a window full of diverged losses does not make them normal
    assert state.spikes == 5 and state.spike_history == [1e6] * 4
    skipped, state = _policy("skip", warmup=3, budget=1), TrainState()
    assert skipped.check(1, 25.0, state).diverged and state.skipped_steps == 1
    with pytest.raises(DivergenceError, match="step 2: loss spike 30 .*the run is diverging.*--max-skipped-steps 1"):
        skipped.check(2, 30.0, state)


def test_off_never_looks():
    policy, state = _policy("off", warmup=0), TrainState(spike_history=[5.0] * 4)
    assert policy.check(5, 1e9, state) is None and state.spikes == 0


# ---- real runs: solo-tiny on one process (the pytest process), global batch 4 (4 packs a step), a spike
# injected at step 5

pytestmark_runs = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tmp_path_factory, world1, quickstart_shards):
    return tmp_path_factory.mktemp("spike"), quickstart_shards


def _run(root, images, texts, name, steps, spike_at, exit_after, save_dir=None, **train):
    from tests.harness import guarded_run as G

    out = root / f"{name}.json"
    run_world(G.run_spike_job, 1, images, texts, save_dir, steps, spike_at, exit_after, str(out), train)
    return json.loads(out.read_text())


@pytestmark_runs
def test_skip_leaves_the_spiking_step_without_its_update_and_names_its_data(shards, capfd):
    from megatron_solo.checkpoint.train_state import read_train_state
    from tests.harness import guarded_run as G

    root, (images, texts) = shards
    save = root / "skip"
    run = _run(root, images, texts, "skip", 5, 5, None, str(save), on_spike="skip", save_interval=4,
               tensorboard_dir=str(root / "skip_tb"), **SPIKE)
    err = capfd.readouterr().err
    assert re.search(r"step 5: loss spike .*update skipped \(--on-spike skip\); data: pack 16 \[[^\]]*:\d{10}", err)
    assert run["losses"][4] > 10 * run["losses"][3]
    state = read_train_state(save / "iter_0000005")
    assert (state.spikes, state.skipped_steps, state.rewinds) == (1, 1, 0)
    outs = [str(root / "skip4.safetensors"), str(root / "skip5.safetensors")]
    run_world(G.weights_of, 1, images, texts, [str(save / "iter_0000004"), str(save / "iter_0000005")], outs)
    before, after = load_file(outs[0]), load_file(outs[1])
    assert all(torch.equal(before[k], after[k]) for k in before)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(root / "skip_tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/spikes")] == [(5, 1.0)]
    assert [(e.step, e.value) for e in events.Scalars("train/skipped_steps")] == [(5, 1.0)]


@pytestmark_runs
def test_rewind_reruns_from_the_checkpoint_skipping_the_data_and_resumes_bit_exact(shards, capfd):
    """Spike at step 5, checkpoint at 3: back to 3, packs 12-19 skipped; stopped at 4 and resumed to 7.

    The reference: a run without a spike stopped at 3, its data position moved by hand to pack 20 (the
    skip an operator would make), resumed to 7.
    """
    from megatron_solo.checkpoint.train_state import read_train_state, write_train_state
    from tests.harness import guarded_run as G

    root, (images, texts) = shards
    rewound, reference = root / "rewound", root / "reference"
    first = _run(root, images, texts, "r1", 7, 5, 5, str(rewound), on_spike="rewind", save_interval=3, **SPIKE)
    assert re.search(r"rewound to \S+iter_0000003 \(iteration 3\): packs 12 to 19 skipped", capfd.readouterr().err)
    assert first["preempted"] and first["iteration"] == 4 and len(first["losses"]) == 5  # steps 1-4, then 4 again
    assert read_train_state(rewound / "iter_0000003").data.consumed_packs == 20  # a resume from 3 skips too
    second = _run(root, images, texts, "r2", 7, None, None, str(rewound), on_spike="rewind", save_interval=3, **SPIKE)
    ref1 = _run(root, images, texts, "u1", 7, None, 3, str(reference), on_spike="off", save_interval=3)
    state = read_train_state(reference / "iter_0000003")
    state.data.consumed_packs = 20
    write_train_state(reference / "iter_0000003", state)
    ref2 = _run(root, images, texts, "u2", 7, None, None, str(reference), on_spike="off", save_interval=3)
    assert first["losses"][:3] == ref1["losses"]
    assert first["losses"][3] != first["losses"][4]  # step 4 again, on other data
    assert second["resumed_from"] == 4 and first["losses"][4:] + second["losses"] == ref2["losses"]
    final = read_train_state(rewound / "iter_0000007")
    assert final.skipped_data == [[12, 20]] and (final.spikes, final.rewinds, final.skipped_steps) == (1, 1, 1)
    assert final.data.consumed_packs == 36
    outs = [str(root / "rewound.safetensors"), str(root / "reference.safetensors")]
    run_world(G.weights_of, 1, images, texts, [str(rewound), str(reference)], outs)
    got, want = load_file(outs[0]), load_file(outs[1])
    assert all(torch.equal(got[k], want[k]) for k in want)
