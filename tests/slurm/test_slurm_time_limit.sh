#!/usr/bin/env bash
# The real time limit: dist/slurm/sn_train.sbatch with a one-minute --time and the script's own
# --signal=B:USR1@120 (more than the limit, so Slurm signals at its first time-limit check). The
# batch shell gets SIGUSR1, the ranks checkpoint and stop, the script requeues the job, which resumes
# (--resume auto) and finishes (signalled again if still running at the next check); its final
# towers and metrics must be byte-identical to an uninterrupted run.
# slurmctld checks time limits every 30 s from its start: the job is submitted shortly before the
# first check (SUBMIT_AT_S), so that it is signalled a few seconds in, and its length (set from the
# step time measured here, TARGET_JOB_S) leaves a wide margin for a machine whose speed changes.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
source "$SRC/tests/slurm/jobs.sh"

SLURMCTLD_CHECK_S=30   # slurmctld's period of time-limit checks (PERIODIC_TIMEOUT, not configurable)
SUBMIT_AT_S=24         # after slurmctld started: the job runs a few seconds before the first check
TARGET_JOB_S=20        # uninterrupted job length, at the step time measured below
CALIBRATION_STEPS=200 CALIBRATION_SKIP=20
MIN_STEPS=500 MAX_STEPS=40000

slurm_test_begin
job_config 1 1
# The step time, from the training's own clock (metrics' elapsed_s), past the first steps' warm-up.
two_ranks calibration --stage 1 --set stage1.steps=$CALIBRATION_STEPS || exit 1
steps=$(python3 - calibration/metrics.jsonl <<PY
import json, sys
t = [json.loads(l)["elapsed_s"] for l in open(sys.argv[1])]
step_s = (t[-1] - t[$CALIBRATION_SKIP]) / (len(t) - 1 - $CALIBRATION_SKIP)
print(min($MAX_STEPS, max($MIN_STEPS, int($TARGET_JOB_S / step_s))))
PY
)
STAGE1=(--stage 1 --set stage1.steps="$steps")
wait_s=$(python3 -c "import time; print(max(0.0, $SLURM_CLUSTER_STARTED_AT + $SUBMIT_AT_S - time.time()))")
sleep "$wait_s"
id=$(submit_job limit --time=1 -- "${STAGE1[@]}")
submitted=$SECONDS
wait_job "$id" 300
log=$(job_log "$id")
fail=0
state=$(job_field "$id" JobState) restarts=$(job_field "$id" Restarts)
[[ $state == COMPLETED && $restarts -ge 1 ]] ||
  { echo "FAIL: job $id ended $state after $restarts requeues; expected COMPLETED after 1 or more" \
         "(the first time-limit check is ${SLURMCTLD_CHECK_S} s after slurmctld's start)"; fail=1; }
if ! grep -q "SIGUSR1 (time limit near" "$log" || ! grep -q "requeueing job" "$log" ||
   ! grep -q "resume: stage 1, step" "$log"; then
  echo "FAIL: no SIGUSR1, requeue and resume in the job log $log"
  tail -30 "$log"
  fail=1
fi
took=$((SECONDS - submitted))
two_ranks straight "${STAGE1[@]}" || exit 1
same_run straight limit "time limit" || fail=1

if [[ $fail != 0 ]]; then
  slurm_cluster_logs
  exit 1
fi
echo "test_slurm_time_limit: a $steps-step job under --time=1 got SIGUSR1 from Slurm" \
     "$(grep -m1 -oE '[0-9]+ s into this run' "$log")," \
     "$(grep -m1 -oE 'resume: stage 1, step [0-9]+' "$log" | sed 's/resume: //') checkpointed, $restarts requeue(s)," \
     "finished in ${took} s; byte-identical to the uninterrupted run"
