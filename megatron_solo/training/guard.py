"""The non-finite guard: a NaN or Inf loss or gradient norm on any rank, agreed by all, before the update.

Every step, after the forward-backward and the gradient norm, one small all-reduce (MAX over the
world) carries: per rank, the first micro-batch whose loss is not finite (so the fault is named with
its data), whether the gradient norm is finite, and the step's global loss (so every rank, not only the
last pipeline stage, sees it for the spike policy). megatron-core's own checks (DDP
``check_for_nan_in_grad``, the rerun state machine) raise on the rank that sees the fault, without the
others agreeing and without the data position; they are off in favour of this one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from megatron_solo.errors import UserInputError


class DivergenceError(UserInputError):
    """A run stopped by its guard (a non-finite step, or the skipped-step budget spent); names the data."""


@dataclass
class StepCheck:
    """What every rank agrees on about one step before its update."""

    loss: float | None  # the global mean loss (None: no rank had a loss, e.g. no loss tokens)
    grad_norm: float | None
    bad_micro: dict[int, int]  # data-parallel rank -> its first micro-batch with a non-finite loss

    @property
    def finite(self) -> bool:
        """Whether the loss, the gradient norm and every micro-batch loss are finite."""
        return not self.bad_micro and _finite(self.loss) and _finite(self.grad_norm)

    def describe(self) -> str:
        """What was not finite, in words."""
        parts = []
        if self.loss is not None and not _finite(self.loss):
            parts.append(f"loss {self.loss}")
        if self.grad_norm is not None and not _finite(self.grad_norm):
            parts.append(f"grad norm {self.grad_norm}")
        parts += [f"the loss of data-parallel rank {r}'s micro-batch {m}" for r, m in sorted(self.bad_micro.items())]
        return ", ".join(parts)


def _finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)


def check_step(micro_losses: list[torch.Tensor] | None, loss: float | None, grad_norm: float | None) -> StepCheck:
    """The agreed StepCheck of this step; ``micro_losses``: this rank's [loss sum, tokens] per micro-batch.

    ``loss`` is the DP-reduced mean loss on the last pipeline stage (None elsewhere); ``grad_norm`` the
    optimizer's (already reduced over the model- and data-parallel groups).
    """
    from megatron.core import parallel_state as ps

    from megatron_solo.platform.distributed import current_device

    world, rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    flags = torch.zeros(world + 3, dtype=torch.float64, device=current_device())
    if micro_losses:
        finite = torch.stack([torch.isfinite(m[0]) for m in micro_losses])
        if not bool(finite.all()):
            flags[rank] = 1 + int((~finite).nonzero()[0])
    # MAX carries one value from the ranks that have it: the others send -inf; a NaN travels as a flag
    flags[world] = -math.inf if loss is None or not math.isfinite(loss) else loss
    flags[world + 1] = 1.0 if loss is not None and not math.isfinite(loss) else 0.0
    flags[world + 2] = 1.0 if grad_norm is not None and not math.isfinite(grad_norm) else 0.0
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    values = flags.tolist()
    bad = {r: int(v) - 1 for r, v in enumerate(values[:world]) if v > 0}
    agreed_loss = math.nan if values[world + 1] else (values[world] if values[world] > -math.inf else None)
    agreed_norm = math.nan if values[world + 2] else grad_norm
    return StepCheck(agreed_loss, agreed_norm, bad)


def count_skipped_step(state, budget: int, what: str, tail: str) -> None:
    """Count one step left without its update in ``state``; DivergenceError once over ``budget``.

    Non-finite skips and spike skips or rewinds share this one budget (--max-skipped-steps).
    """
    state.skipped_steps += 1
    if state.skipped_steps > budget:
        raise DivergenceError(f"{what}: {state.skipped_steps} steps skipped, over --max-skipped-steps {budget}{tail}")


class NonFinitePolicy:
    """What a non-finite step does: stop the run (``stop``) or skip its update (``skip``, within a budget)."""

    def __init__(self, on_nonfinite: str, max_skipped_steps: int) -> None:
        self.on_nonfinite, self.budget = on_nonfinite, max_skipped_steps

    def allows_update(self, check: StepCheck, iteration: int, state, data: str) -> bool:
        """True for a finite step; False for one skipped (counted in ``state``); DivergenceError to stop.

        ``iteration``: the step's number; ``data``: its data position in words (:mod:`.data_position`).
        """
        if check.finite:
            return True
        what = f"iteration {iteration}: not finite: {check.describe()}; the update was not applied"
        if self.on_nonfinite == "stop":
            raise DivergenceError(f"{what} and nothing saved (--on-nonfinite stop); data: {data}")
        count_skipped_step(state, self.budget, what, f"; data: {data}")
        return False
