"""The step loop of a run: train one step, count the data, validate, log, checkpoint, stop when asked."""

from __future__ import annotations

import dataclasses
import time

from megatron_solo.training.checkpointing import CheckpointSaver
from megatron_solo.training.guard import DivergenceError, NonFinitePolicy
from megatron_solo.training.run import Run, log_rank
from megatron_solo.training.spike import SpikePolicy


class StepLoop:
    """Runs the steps of a built and resumed :class:`Run` until ``train_steps`` or a stop."""

    def __init__(self, run: Run) -> None:
        from megatron_solo.training.data_loss import DataLossTally
        from megatron_solo.training.profiling import StepProfiler
        from megatron_solo.training.progress import TrainLogger
        from megatron_solo.training.rank_times import OwnTimeClock
        from megatron_solo.training.tracking import wandb_settings

        self.run_ = run
        self.train = run.job.train
        wandb = wandb_settings(self.train, run.saved is not None, dataclasses.asdict(run.job))
        self.logger = TrainLogger(log_rank(), self.train.tensorboard_dir, self.train.train_steps, wandb=wandb)
        self.profiler = StepProfiler.for_job(self.train)
        self.clock = OwnTimeClock()  # this rank's own part of each step, compared across data-parallel ranks
        self.dropped = DataLossTally(run.loader.dataset)
        self.dropped.update(run.loader.consumed_packs)
        self.logger.data(run.state.iteration, self.dropped.samples, self.dropped.tokens)
        self.batches = None  # started in run(), once the flag is installed: its workers then ignore the job's signals
        self.steps_here = 0
        self.saved_at = run.saved.iteration if run.saved is not None else None
        self.flag = None
        self.nonfinite = NonFinitePolicy(self.train.on_nonfinite, self.train.max_skipped_steps)
        self.spikes = SpikePolicy(self.train, run.model_cfg.padded_vocab_size(run.job.parallel.tensor_parallel))
        self.saver = CheckpointSaver(self.train)

    def run(self) -> None:
        """Step until the run is complete or stopped; the summary says which, and whether it is saved."""
        from megatron_solo.training.preemption import PreemptionFlag

        run = self.run_
        run.summary.iteration = run.state.iteration
        self.flag = PreemptionFlag()
        try:
            self.batches = iter(run.loader)
            while run.state.iteration < self.train.train_steps and self._step():
                pass
            self.saver.wait()
        except DivergenceError:
            self.saver.wait()  # the checkpoint in flight was written before the fault: it becomes the latest
            raise
        finally:
            if self.batches is not None:
                # its loader workers shut down now: they ignore SIGTERM (the job's signal), which is how
                # multiprocessing would end them at exit
                self.batches.close()
            self.saver.close(abort=True)  # only a write left by an unexpected error is still in flight
            run.summary.checkpoint = self.saver.latest or run.summary.checkpoint
            self.flag.restore()
            self.profiler.close()
            self.logger.close()
        run.summary.saved = self.saved_at == run.state.iteration

    def _step(self) -> bool:
        """One optimizer step and what follows it; False when the run stops early."""
        from megatron_solo.training.rank_times import gather_rank_times

        run, state = self.run_, self.run_.state
        result, seconds = self._train_step()
        self.saver.poll()
        if result.rewound:
            return True
        ranks = gather_rank_times(self.clock.seconds())
        if self.dropped.update(run.loader.consumed_packs):
            self.logger.data(state.iteration + 1, self.dropped.samples, self.dropped.tokens)
        state.iteration += 1
        self.steps_here += 1
        state.consumed_samples += self.train.global_batch_size
        if result.loss is not None:
            run.summary.losses.append(result.loss)
        signalled = self.flag.agreed()
        last = state.iteration == self.train.train_steps
        val_loss = None if signalled else self._validate(last)
        scalars = {"loss": result.loss, "lr": run.optimizer.param_groups[0]["lr"], "grad_norm": result.grad_norm}
        if state.skipped_steps:
            scalars["skipped_steps"] = state.skipped_steps
        if state.spikes:
            scalars["spikes"] = state.spikes
        self.logger.step(
            state.iteration, scalars,
            tokens=self.train.global_batch_size * self.train.seq_length, seconds=seconds, val_loss=val_loss,
            dropped_samples=self.dropped.samples, ranks=ranks,
        )
        exit_after = run.job.exit_after_steps
        stop = signalled or (exit_after is not None and self.steps_here >= exit_after)
        if self.saver.due(state.iteration, last, stop):
            self._save()
        if stop and not last:
            run.summary.preempted = True
            return False
        return True

    def _train_step(self):
        """(StepResult, seconds) of one forward-backward over the step's micro-batches and its guarded update."""
        from megatron_solo.training.forward_step import solo_forward_step
        from megatron_solo.training.step import train_step

        run = self.run_
        self.profiler.before_step(run.state.iteration + 1)
        start, before = time.perf_counter(), run.loader.consumed_packs
        self.clock.start()
        micro = [next(self.batches) for _ in range(run.num_microbatches)]
        result = train_step(solo_forward_step, [iter(micro) for _ in run.chunks], run.chunks, run.optimizer,
                            run.scheduler, num_microbatches=run.num_microbatches, seq_length=self.train.seq_length,
                            micro_batch_size=self.train.micro_batch_size, before_grad_sync=self.clock.mark,
                            verdict=lambda check: self._verdict(check, before))
        seconds = time.perf_counter() - start
        self.profiler.after_step(run.state.iteration + 1)
        return result, seconds

    def _verdict(self, check, before: int) -> str:
        """What the non-finite and spike policies make of a checked step: "apply", "skip" or "rewound"."""
        run = self.run_
        if not self.nonfinite.allows_update(check, run.state.iteration + 1, run.state, self._data_words(check, before)):
            self.logger.info(f"step {run.state.iteration + 1}: not finite ({check.describe()}): update skipped "
                             f"({run.state.skipped_steps} of at most {self.train.max_skipped_steps})", warning=True)
            return "skip"
        verdict = self._spike_verdict(check.loss, before)
        if verdict == "rewind":
            return "rewound" if self._rewind() else "skip"
        return verdict

    def _spike_verdict(self, loss: float | None, before: int) -> str:
        """What the spike policy makes of this step's loss: "apply" its update, "skip" it, or "rewind"."""
        from megatron_solo.training.data_position import describe_packs

        spike = self.spikes.check(self.run_.state.iteration + 1, loss, self.run_.state)
        if spike is None:
            return "apply"
        if self.logger.enabled:
            packs = list(range(before, before + self.train.global_batch_size))
            self.logger.info(self.spikes.describe(spike, describe_packs(self.run_.loader.dataset, packs)),
                             warning=True)
        return {"warn": "apply", "skip": "skip", "rewind": "rewind"}[self.spikes.policy]

    def _rewind(self) -> bool:
        """Go back to the latest checkpoint, skipping the data up to this step's end; False without one."""
        from megatron_solo.training.rewind import rewind_to_latest

        run = self.run_
        self.saver.wait()  # the write in flight may be the checkpoint to go back to
        end = run.loader.consumed_packs
        self.batches.close()  # its workers read ahead from the old position
        done = rewind_to_latest(run, end)
        self.batches = iter(run.loader)
        if done is None:
            self.logger.info("no checkpoint to rewind to yet: the step is only skipped", warning=True)
            return False
        path, (first, last) = done
        self.logger.info(f"rewound to {path} (iteration {run.state.iteration}): packs {first} to {last - 1} "
                         f"skipped ({run.state.rewinds} rewinds)", warning=True)
        return True

    def _data_words(self, check, before: int) -> str:
        """The data position of a step: the packs of its non-finite micro-batches, else all its packs."""
        from megatron_solo.training.data_position import describe_packs, micro_batch_packs

        if check.finite:
            return ""
        run, mbs = self.run_, self.train.micro_batch_size
        if check.bad_micro:
            packs = [g for r, m in sorted(check.bad_micro.items())
                     for g in micro_batch_packs(before, r, m, mbs, run.data_parallel)]
        else:
            packs = list(range(before, before + self.train.global_batch_size))
        return describe_packs(run.loader.dataset, packs)

    def _validate(self, last: bool) -> float | None:
        """The validation loss when this step validates (every eval_interval steps and the last)."""
        run = self.run_
        if run.validator is None or not (run.state.iteration % self.train.eval_interval == 0 or last):
            return None
        val_loss = run.validator.loss(run.chunks)
        if val_loss is not None:
            run.summary.val_losses.append((run.state.iteration, val_loss))
        return val_loss

    def _save(self) -> None:
        """Checkpoint this step with the loader's data position (in the background with --async-save)."""
        from megatron_solo.checkpoint.train_state import DataPosition

        run = self.run_
        run.state.data = DataPosition(**run.loader.state_dict())
        self.saver.save(run.state, run.chunks, run.optimizer, run.scheduler)
        self.saved_at = run.state.iteration
