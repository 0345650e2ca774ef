#!/usr/bin/env bash
# dist/slurm/sn_train.sbatch under a real Slurm (a one-host cluster from tests/slurm/cluster.sh),
# the script itself with sbatch options in place of its GPU defaults: 2 tasks on one node, the CPU
# backend, no MPI (the ranks meet at the TCP rendezvous on the allocation's first node).
#  1. plain:   the job's losses and towers follow the 1-process run (as the MPI tests check), the
#              log says which rank runs where, and the rendezvous and TCP backend were used.
#  2. usr1:    `scancel --batch --signal=USR1` mid-run (what --signal=B:USR1@T sends before the time
#              limit): the ranks checkpoint, the script requeues the job, it resumes and finishes
#              with towers and metrics byte-identical to the plain job.
#  3. requeue: `scontrol requeue` mid-run (SIGTERM to every task): the same.
#  4. kill:    SIGKILL to rank 1 mid-run: the job fails within a bound with a message naming the rank;
#              requeued, it resumes from the last complete checkpoint and ends byte-identical too.
# The real time limit is test_slurm_time_limit.sh (it costs a minute of waiting).
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
source "$SRC/tests/slurm/jobs.sh"

KILL_FAILS_WITHIN_S=30  # a killed rank must end the job this fast (the comm timeout is 60 s)

slurm_test_begin

job_config 200 20  # stage 1 steps, stage 2 steps: a few seconds, long enough to signal mid-run
SHORT=(--set stage1.steps=4 --set stage2.steps=3)  # as the MPI tests: losses still within 1e-5
"$BUILD/sn_train" --config cfg.json --set run_dir=np1 "${SHORT[@]}" 2> np1.log || { tail np1.log; exit 1; }
two_ranks straight || exit 1
fail=0

# ---- 1. plain ----------------------------------------------------------------------------------
id=$(submit_job plain -- "${SHORT[@]}")
wait_job "$id" 120
expect_job "$id" COMPLETED 0 || fail=1
log=$(job_log "$id")
node=$(hostname -s)
for line in "rendezvous $node:" "rank 0/2 on host $node, local rank 0/2" "rank 1/2 on host $node, local rank 1/2" \
            "2 ranks (tcp)" "launcher slurm, tcp backend"; do
  grep -qF "$line" "$log" || { echo "FAIL: plain: the job log has no '$line'"; fail=1; }
done
python3 "$SRC/tests/compare_runs.py" np1 plain || { echo "FAIL: the Slurm job does not follow the 1-process run"; fail=1; }

# ---- 2. and 3. preempted by a signal, requeued, resumed ----------------------------------------
# No periodic checkpoint in these jobs: the one they resume from was written when they were stopped,
# at or after the step logged when the signal went.
preempt() {  # preempt NAME COMMAND...: runs COMMAND JOBID a few steps into the job
  local name=$1 id log at resumed
  shift
  id=$(submit_job "$name")
  wait_for_steps "$name" "$id" 3 || return 1
  at=$(metrics_lines "$name")
  "$@" "$id"
  wait_job "$id" 180
  log=$(job_log "$id")
  expect_job "$id" COMPLETED 1 || { tail -20 "$log"; return 1; }
  resumed=$(grep -m1 -oE "resume: stage 1, step [0-9]+" "$log" | grep -oE "[0-9]+$" || echo 0)
  ((resumed >= at)) || { echo "FAIL: $name: signalled at step $at, resumed at step $resumed"; tail -20 "$log"; return 1; }
  same_run straight "$name" "$name" || return 1
  echo "ok: $name: signalled after step $at, checkpointed at step $resumed, requeued, resumed there," \
       "byte-identical to the uninterrupted run"
}
scancel_usr1() { scancel --batch --signal=USR1 "$1"; }
preempt usr1 scancel_usr1 || fail=1
log=$(job_log "$(job_id_of usr1)")
grep -q "stopped before the end" "$log" && grep -q "requeueing job" "$log" ||
  { echo "FAIL: usr1: the ranks did not stop, or the script did not requeue the job"; fail=1; }
preempt requeue scontrol requeue || fail=1

# ---- 4. a rank killed ----------------------------------------------------------------------------
id=$(submit_job kill -- --set checkpoint.every=5)
# after a checkpoint (every 5 steps) is complete, so that the requeued job resumes from it
wait_for_steps kill "$id" 12 || fail=1
log=$(job_log "$id")
pid=$(grep -oE "rank 1/2 on host [^,]*, local rank 1/2, pid [0-9]+" "$log" | grep -oE "[0-9]+$" || true)
if [[ -z $pid ]]; then
  echo "FAIL: kill: no pid of rank 1 in $log"
  fail=1
else
  killed_at=$(date +%s) killed_step=$(metrics_lines kill)
  kill -KILL "$pid"
  wait_job "$id" "$KILL_FAILS_WITHIN_S" || fail=1
  took=$(($(date +%s) - killed_at))
  expect_job "$id" FAILED 0 || fail=1
  grep -qE "error: rank 0/2: .*connection to rank 1 was closed|task 1: Killed" "$log" ||
    { echo "FAIL: kill: no message naming rank 1 in $log"; tail -20 "$log"; fail=1; }
  last_ckpt=$(find kill -maxdepth 1 -name 'ckpt-*' -type d | sort -V | tail -1)
  scontrol requeue "$id"
  wait_job "$id" 180
  expect_job "$id" COMPLETED 1 || fail=1
  stage_step=${last_ckpt##*/ckpt-}  # S-N
  grep -q "resume: stage ${stage_step%-*}, step ${stage_step#*-}," "$log" ||
    { echo "FAIL: kill: not resumed from the last complete checkpoint $last_ckpt"; grep "resume:" "$log"; fail=1; }
  same_run straight kill "kill" || fail=1
  echo "ok: kill: rank 1 (pid $pid) killed after step $killed_step; the job failed after ${took} s" \
       "($(grep -m1 -oE 'error: rank 0/2: .{0,100}|task 1: Killed' "$log")); requeued, it resumed from $last_ckpt and" \
       "ended byte-identical to the uninterrupted run"
fi

if [[ $fail != 0 ]]; then
  slurm_cluster_logs
  exit 1
fi
echo "test_slurm_train: sn_train.sbatch on a one-host Slurm cluster: 2 ranks over TCP follow the 1-process run;" \
     "USR1, scontrol requeue and a killed rank all resume to byte-identical towers"
