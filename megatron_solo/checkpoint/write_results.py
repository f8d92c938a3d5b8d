"""The queue megatron-core's shard writers report through, started so that the job's signals spare it.

``dist_checkpointing``'s file-system writer (synchronous and asynchronous saves alike) sends each
write's results to the trainer through a queue served by a manager process that megatron-core starts
with ``spawn`` the first time it needs one. A spawned process runs none of our fork hooks: a signal
sent to the whole job (Slurm's ``--signal``, ``scancel``, ``kill -- -PGID``) ended it with the default
action, and every later save failed (``ConnectionRefusedError``, ``BrokenPipeError``) although the
trainer had caught the signal to save. :func:`ensure_write_results_queue` starts that manager first,
with the job's signals blocked, and has it ignore them and die with the trainer; megatron-core then
finds its queue made and uses it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from multiprocessing import resource_tracker
from multiprocessing.managers import SyncManager

from megatron_solo.platform.processes import job_signals_blocked, shield_helper


class _ReportedBySaver(logging.Filter):
    """Drops megatron-core's line about a failed writer process: the failed save reports it, in its one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "encountered an error" not in record.getMessage()


def ensure_write_results_queue() -> None:
    """Make megatron-core's write-results queue (once per process), served by a shielded manager."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is not None:
        return
    filesystem_async.logger.addFilter(_ReportedBySaver())
    with job_signals_blocked():
        # multiprocessing's resource tracker is spawned with the first spawned process; it ignores
        # SIGTERM itself but not SIGUSR1, and is started here so that it inherits the block too.
        resource_tracker.ensure_running()
    with job_signals_blocked():  # again: starting the tracker unblocks SIGTERM in this thread
        manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
        manager.start(initializer=shield_helper, initargs=(os.getpid(),))
    # the queue's proxy holds the manager, which shuts its process down when the trainer exits
    filesystem_async._results_queue = manager.Queue()
