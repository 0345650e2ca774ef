#!/usr/bin/env bash
# The real time limit: dist/slurm/sn_train.sbatch with a one-minute --time and the script's own
# --signal=B:USR1@120 (more than the limit, so Slurm signals at its first time-limit check, which
# it makes every 30 s). The batch shell gets SIGUSR1, the ranks checkpoint and stop, the script
# requeues the job, which resumes (--resume auto) and finishes; its final towers and metrics must
# be byte-identical to an uninterrupted run. The job must still be running when the signal comes:
# its length is set from the step time measured here (TARGET_JOB_S).
set -euo pipefail
BUILD=$1
SRC=${SN_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
source "$SRC/tests/slurm/jobs.sh"

TARGET_JOB_S=40        # uninterrupted job length: past Slurm's first time-limit check (30 s)
CALIBRATION_STEPS=200 CALIBRATION_SKIP=20
MIN_STEPS=1000 MAX_STEPS=40000

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
id=$(submit_job limit --time=1 -- "${STAGE1[@]}")
submitted=$SECONDS
wait_job "$id" 300
log=$(job_log "$id")
fail=0
state=$(job_field "$id" JobState) restarts=$(job_field "$id" Restarts)
[[ $state == COMPLETED && $restarts -ge 1 ]] ||
  { echo "FAIL: job $id ended $state after $restarts requeues; expected COMPLETED after 1 or more"; fail=1; }
grep -q "SIGUSR1 (time limit near" "$log" && grep -q "requeueing job" "$log" && grep -q "resume: stage 1, step" "$log" ||
  { echo "FAIL: no SIGUSR1, requeue and resume in the job log $log"; tail -30 "$log"; fail=1; }
took=$((SECONDS - submitted))
two_ranks straight "${STAGE1[@]}" || exit 1
same_run straight limit "time limit" || fail=1

if [[ $fail != 0 ]]; then
  slurm_cluster_logs
  exit 1
fi
echo "test_slurm_time_limit: a $steps-step job under --time=1 got SIGUSR1 from Slurm," \
     "$(grep -m1 -oE 'resume: stage 1, step [0-9]+' "$log" | sed 's/resume: //') checkpointed, $restarts requeue(s)," \
     "finished in ${took} s; byte-identical to the uninterrupted run"
