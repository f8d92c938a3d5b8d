# Shared by the sbatch scripts in this folder; sourced, not run. The caller sets SOLO_REPO
# (the checkout) first. What it gives a batch script:
#   solo_setup        check the checkout and the interpreter ($PYTHON, default `python`), put
#                     the checkout first on PYTHONPATH, export MASTER_ADDR and MASTER_PORT
#   solo_train ARGS   run tools/pretrain.py ARGS on every task of the allocation and, when the
#                     run stopped early on a signal (USR1 ahead of the time limit, or
#                     preemption) with a checkpoint saved, requeue this job so it resumes
#
# Settings (environment, exported at submission; sbatch passes the environment on):
#   SOLO_REPO=DIR            the checkout (default: two folders above the submitted script)
#   PYTHON=PATH              the interpreter with torch, megatron-core and megatron_solo
#   SOLO_LAUNCHER=srun|torchrun
#                            srun: one task per GPU, megatron_solo maps SLURM_PROCID etc.
#                            torchrun: one task per node running torchrun (allocate
#                            --ntasks-per-node=1), SOLO_PROCS_PER_NODE workers each
#   SOLO_SHUTDOWN_TIMEOUT=S  torchrun: how long workers may take to finish a step and save
#                            after the signal before torchrun kills them (default 900)
#   SOLO_MASTER_PORT=N       override the rendezvous port derived from the job id
#   SOLO_REQUEUE=0           never requeue (a stopped run then ends the job as COMPLETED)
#   SOLO_DRY_RUN=1           print the launch line instead of running it
#
# --exit-after-steps N in ARGS stops the same way as a signal, so such a job trains N steps
# per allocation and requeues itself until it reaches --train-steps. Without --save there
# is nothing to resume from and the job is not requeued.
# Relative paths in ARGS (--data, --save, ...) are relative to the submit directory, where
# the job runs.

solo_die() {
  echo "solo: $*" >&2
  exit 2
}

solo_setup() {
  [ -f "$SOLO_REPO/tools/pretrain.py" ] \
    || solo_die "$SOLO_REPO/tools/pretrain.py not found: set SOLO_REPO to the megatron_solo checkout"
  PYTHON=${PYTHON:-python}
  command -v "$PYTHON" >/dev/null \
    || solo_die "interpreter '$PYTHON' not found: activate the environment or set PYTHON=/path/to/bin/python"
  # The tools of this checkout run against its own library, installed or not.
  export PYTHONPATH="$SOLO_REPO${PYTHONPATH:+:$PYTHONPATH}"
  "$PYTHON" -c "import torch, megatron.core, megatron_solo" 2>/dev/null \
    || solo_die "'$PYTHON' cannot import torch, megatron.core and megatron_solo: set PYTHON to the right environment"
  MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  # A fixed port makes two jobs sharing a node collide. The rule is the one of
  # megatron_solo.platform.distributed.slurm_master_port: below the ephemeral ports.
  MASTER_PORT=${SOLO_MASTER_PORT:-$((10000 + SLURM_JOB_ID % 20000))}
  export MASTER_ADDR MASTER_PORT
  echo "solo: job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0}, repo $SOLO_REPO, python $(command -v "$PYTHON"), rendezvous $MASTER_ADDR:$MASTER_PORT"
}

# The command line that starts the trainer on every task, for the chosen launcher.
solo_launch_line() {
  case "${SOLO_LAUNCHER:-srun}" in
    srun)
      # One task per GPU; megatron_solo maps SLURM_PROCID/NTASKS/LOCALID onto RANK/WORLD_SIZE/LOCAL_RANK.
      SOLO_LINE=(srun --kill-on-bad-exit=1 "$PYTHON" "$SOLO_REPO/tools/pretrain.py" "$@") ;;
    torchrun)
      # torchrun dies on a signal it does not handle and orphans its workers, so SIGUSR1 is
      # added to its defaults; it forwards the signal, then waits --shutdown-timeout for the
      # workers (a step plus a save) before it kills them, and exits non-zero itself.
      SOLO_LINE=(srun --kill-on-bad-exit=1 --ntasks="$SLURM_NNODES" --ntasks-per-node=1
        "$PYTHON" -m torch.distributed.run --nnodes="$SLURM_NNODES"
        --nproc-per-node="${SOLO_PROCS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}"
        --rdzv-id="$SLURM_JOB_ID" --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"
        --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1
        --shutdown-timeout="${SOLO_SHUTDOWN_TIMEOUT:-900}"
        "$SOLO_REPO/tools/pretrain.py" "$@") ;;
    *) solo_die "SOLO_LAUNCHER must be srun or torchrun, not '$SOLO_LAUNCHER'" ;;
  esac
}

# Whether the run logged in file $1 stopped early on a signal, before its last step.
# tools/pretrain.py ends with "done: iteration N, ... (stopped early, checkpoint saved)" (or
# "(stopped early (no --save: nothing saved))", which solo_train does not requeue) and exits 0 (under torchrun the launcher's own status is non-zero),
# so the log, not the status, tells; the step lines "step I/TOTAL" give the target.
solo_stopped_early() {
  local done_line iteration total
  done_line=$(grep -oE 'done: iteration [0-9]+, .*stopped early.*' "$1" | tail -n 1 || true)
  [ -n "$done_line" ] || return 1
  iteration=$(sed -E 's/^done: iteration ([0-9]+),.*/\1/' <<<"$done_line")
  total=$(grep -oE 'step [0-9]+/[0-9]+' "$1" | tail -n 1 | cut -d/ -f2 || true)
  # Stopped at the last step: the run is complete, a requeue would only redo nothing.
  [ -z "$total" ] || [ "$iteration" -lt "$total" ]
}

# Whether the trainer's arguments name a checkpoint folder.
solo_saves() {
  local arg
  for arg in "$@"; do
    case "$arg" in --save|--save=*) return 0 ;; esac
  done
  return 1
}

solo_train() {
  solo_launch_line "$@"
  if [ "${SOLO_DRY_RUN:-0}" = 1 ]; then
    echo "solo: dry run: ${SOLO_LINE[*]}"
    return 0
  fi
  local log rc
  log=$(mktemp "${TMPDIR:-/tmp}/solo-$SLURM_JOB_ID.XXXXXX")
  # The trainer's output goes to the job log as usual and, for this attempt only (the job
  # log is appended to across requeues), to $log.
  set +e
  "${SOLO_LINE[@]}" | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "${SOLO_REQUEUE:-1}" != 0 ] && solo_stopped_early "$log"; then
    rm -f "$log"
    # tools/pretrain.py reports a stop the same way without --save; a requeue would then
    # start again from scratch.
    if ! solo_saves "$@"; then
      echo "solo: stopped early but no --save was given: not requeueing (nothing to resume from)"
      return "$rc"
    fi
    echo "solo: stopped early with a checkpoint saved; requeueing job $SLURM_JOB_ID to resume"
    # Slurm ends this script and queues the job again (after a short delay), same job id.
    scontrol requeue "$SLURM_JOB_ID" \
      || { echo "solo: scontrol requeue failed: resubmit the job to resume" >&2; exit 1; }
    sleep 300 & wait $!  # let the requeue end the script, not a COMPLETED exit racing it
    exit 0
  fi
  rm -f "$log"
  return "$rc"
}
