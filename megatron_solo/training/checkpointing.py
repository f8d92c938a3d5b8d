"""When the step loop checkpoints, and how: every ``save_interval`` steps or minutes, synchronously or not.

With ``async_save`` the shards are written by megatron-core's asynchronous save (a forked writer per rank,
scheduled on its AsyncCallsQueue) while training goes on; each step polls the queue, and a checkpoint is
renamed into place and made the latest in the finalize step, once its write ended on every rank. At most
one write is in flight: a new save first waits for the previous one (each holds a host copy of the state).
A stop, the end of the run, a rewind and a guard's stop wait for the write in flight (:meth:`wait`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from megatron_solo.config.train import TrainConfig


class CheckpointSaver:
    """Decides which steps save, starts their saves and finishes them (at once, or when written)."""

    def __init__(self, train: TrainConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.train, self.clock = train, clock
        self.last_save_time = clock()
        self.queue = None
        self.pending = None  # the PendingSave of the write in flight
        self.latest: str | None = None  # the newest checkpoint this saver made the latest

    def due(self, iteration: int, last: bool, stop: bool) -> bool:
        """Whether step ``iteration`` saves: the last, a stop, every save_interval steps or minutes (agreed)."""
        if not self.train.save_dir:
            return False
        if last or stop or iteration % self.train.save_interval == 0:
            return True
        minutes = self.train.save_interval_minutes
        if minutes is None:
            return False
        elapsed = torch.tensor([self.clock() - self.last_save_time >= 60 * minutes], dtype=torch.float32)
        if torch.distributed.is_initialized():  # rank 0's clock decides for all
            from megatron_solo.platform.distributed import current_device

            elapsed = elapsed.to(current_device())
            torch.distributed.broadcast(elapsed, src=0)
        return bool(elapsed.item())

    def save(self, state, chunks, optimizer, scheduler) -> str:
        """Checkpoint ``state`` (finished before this returns unless async_save); the checkpoint's folder."""
        from megatron_solo.checkpoint.state import start_save

        self.wait()
        self.last_save_time = self.clock()
        pending = start_save(self.train.save_dir, state, chunks, optimizer, scheduler,
                             async_save=self.train.async_save)
        if pending.request is None:
            pending.finish()
            self.latest = pending.final
            return pending.final
        self._async_queue().schedule_async_request(pending.request)
        self.pending = pending
        return pending.final

    def poll(self) -> None:
        """Finish the write in flight if it ended on every rank (one small all-reduce while one is in flight)."""
        if self.pending is not None and self._finalize(blocking=False):
            self.latest, self.pending = self.pending.final, None

    def wait(self) -> None:
        """Block until the write in flight is written and finished on every rank."""
        if self.pending is not None:
            self._finalize(blocking=True)
            self.latest, self.pending = self.pending.final, None

    def _finalize(self, blocking: bool) -> list[int]:
        """megatron-core's finalize of the writes that ended; a failed write is one line (CheckpointError)."""
        from torch.distributed.checkpoint.api import CheckpointException

        try:
            return self.queue.maybe_finalize_async_calls(blocking=blocking)
        except CheckpointException as err:  # a BaseException: it would pass by every `except Exception`
            failed, self.pending = self.pending, None
            raise failed.failure(err) from err

    def close(self, abort: bool = False) -> None:
        """Wait for the write in flight (or, with ``abort``, end its writer: it never becomes the latest)."""
        if abort and self.queue is not None:
            # megatron-core's queue.close(abort=True) ends only a persistent writer: a forked one is killed
            # here (its own worker processes die with it), or the process would wait for it at exit
            for call in self.queue.async_calls:
                writer = call.async_caller.process
                call.async_caller.close(abort=True)
                if writer is not None:
                    writer.join()
            self.queue.async_calls.clear()
            self.pending = None
        self.wait()

    def _async_queue(self):
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        if self.queue is None:
            # a forked writer per save (persistent=False): on a CPU the fork's copy-on-write pages are the
            # snapshot; a persistent writer would be handed the live tensors through shared memory
            self.queue = AsyncCallsQueue(persistent=False)
        return self.queue
