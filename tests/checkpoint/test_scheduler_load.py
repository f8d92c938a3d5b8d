"""Loading a schedule into a scheduler that has already stepped (a rewind) puts it at the saved step."""

from __future__ import annotations

import torch

from megatron_solo.checkpoint.state import load_scheduler


def _scheduler():
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    return OptimizerParamScheduler(optimizer, init_lr=0.0, max_lr=1.0, min_lr=0.1, lr_warmup_steps=2,
                                   lr_decay_steps=10, lr_decay_style="linear", start_wd=0.0, end_wd=0.0,
                                   wd_incr_steps=10, wd_incr_style="constant")


def test_a_stepped_scheduler_loads_to_the_saved_step():
    saved = _scheduler()
    saved.step(increment=3)
    running = _scheduler()
    running.step(increment=6)
    load_scheduler(running, saved.state_dict())
    assert running.num_steps == 3 and running.optimizer.param_groups[0]["lr"] == saved.optimizer.param_groups[0]["lr"]
