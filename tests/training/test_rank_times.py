"""The clock of a rank's own step time stops where the waiting starts (the gather: test_slow_ranks.py)."""

from __future__ import annotations

import time

import pytest

from megatron_solo.training.rank_times import OwnTimeClock


def test_the_clock_stops_when_the_gradient_reduction_starts():
    clock = OwnTimeClock()
    clock.start()
    time.sleep(0.1)
    clock.mark()  # the rank enters the reduction, where it waits for the others
    time.sleep(0.3)
    clock.mark()  # a second reduction call inside the same step does not move the mark
    assert 0.1 <= clock.seconds() < 0.25
    clock.start()  # the next step starts afresh; without a reduction the clock reads the time so far
    time.sleep(0.05)
    assert 0.05 <= clock.seconds() < 0.25
    with pytest.raises(RuntimeError, match="before start"):
        OwnTimeClock().seconds()
