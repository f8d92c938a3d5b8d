"""Which steps checkpoint: every save_interval steps, the last and a stop, and every save_interval_minutes."""

from __future__ import annotations

import pytest

from megatron_solo.config.train import TrainConfig
from megatron_solo.errors import UserInputError
from megatron_solo.training.checkpointing import CheckpointSaver


def test_steps_and_minutes_both_make_a_save_due():
    now = [0.0]
    saver = CheckpointSaver(TrainConfig(save_dir="ckpt", save_interval=10, save_interval_minutes=2.0),
                            clock=lambda: now[0])
    now[0] = 119.0
    assert not saver.due(3, last=False, stop=False)
    assert saver.due(10, last=False, stop=False) and saver.due(3, last=True, stop=False)
    assert saver.due(3, last=False, stop=True)
    now[0] = 120.0
    assert saver.due(4, last=False, stop=False)  # two minutes since the saver started (or last saved)


def test_nothing_is_due_without_a_save_folder():
    assert not CheckpointSaver(TrainConfig(save_interval=1)).due(1, last=True, stop=True)


@pytest.mark.parametrize("fields, message", [
    ({"save_interval_minutes": 0.0}, "save_interval_minutes must be positive"),
    ({"on_spike": "panic"}, "on_spike must be one of"),
    ({"spike_window": 2}, "spike_window must be at least 3"),
    ({"on_spike": "rewind"}, "rewind goes back to the last checkpoint: give save_dir"),
])
def test_bad_guard_settings_are_one_line_errors(fields, message):
    with pytest.raises(UserInputError, match=message):
        TrainConfig(**fields)


def _sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


def test_an_aborted_saver_ends_the_writer_in_flight(world1):
    from megatron.core.dist_checkpointing.strategies.async_utils import AsyncRequest

    saver = CheckpointSaver(TrainConfig(save_dir="ckpt", async_save=True))
    saver.pending = object()  # a write in flight that must never become the latest
    saver._async_queue().schedule_async_request(AsyncRequest(_sleep, (120.0,), []))
    writer = saver.queue.async_calls[0].async_caller.process
    assert writer.is_alive()
    saver.close(abort=True)
    assert not writer.is_alive() and saver.queue.get_num_unfinalized_calls() == 0
    assert saver.pending is None and saver.latest is None
