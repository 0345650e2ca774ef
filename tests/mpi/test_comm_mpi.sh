#!/usr/bin/env bash
# The MPI communicator under mpirun: every collective at 2 and 3 ranks (tests/mpi/mpi_comm_check.c),
# then the failure modes, which must end the job with an error within a bound, never hang:
#   exit: rank 1 exits(1) mid-run -> mpirun kills the others (Open MPI's job abort);
#   hang: rank 1 stops calling collectives -> the watchdog aborts the others after --timeout.
# Usage: test_comm_mpi.sh BUILD_DIR. Exit 77 (skipped) when mpirun is missing.
set -u
build_dir=${1:-build}
command -v mpirun >/dev/null || { echo "SKIP: mpirun not found"; exit 77; }
check=""
for candidate in "$build_dir/tests/mpi_comm_check" "$build_dir/mpi_comm_check"; do
  [[ -x $candidate ]] && check=$candidate && break
done
[[ -n $check ]] || { echo "FAIL: mpi_comm_check not built under $build_dir"; exit 1; }

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_NUM_THREADS=1  # several ranks share few cores
mpirun_cmd=(mpirun --oversubscribe -np)
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

for np in 2 3; do
  if "${mpirun_cmd[@]}" "$np" "$check"; then echo "ok: collectives at np=$np"
  else fail "collectives at np=$np"; fi
done

job_limit_s=60      # the bound a failed job must end within
hang_timeout_s=3    # the communicator's timeout in the hang test
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# run_failure NP DEVICE MODE MESSAGE...: the job must end non-zero within job_limit_s and print
# every MESSAGE.
run_failure() {
  local np=$1 device=$2 mode=$3 start end status message
  shift 3
  start=$(date +%s.%N)
  timeout "$job_limit_s" "${mpirun_cmd[@]}" "$np" "$check" --device "$device" --timeout "$hang_timeout_s" \
    --fail "$mode" >"$log" 2>&1
  status=$?
  end=$(date +%s.%N)
  local took
  took=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  if [[ $status -eq 0 ]]; then fail "$device --fail $mode: the job ended with status 0"
  elif [[ $status -eq 124 ]]; then fail "$device --fail $mode: the job hung past ${job_limit_s}s"
  else
    local missing=0
    for message in "$@"; do
      grep -q -- "$message" "$log" || { fail "$device --fail $mode: no '$message' in the output"; missing=1; }
    done
    [[ $missing -eq 0 ]] && echo "ok: $device np=$np --fail $mode ended with status $status after ${took}s, printing: $*"
  fi
  sed 's/^/  | /' "$log" | head -n 30
}
# Open MPI's own words when it aborts the job because a rank exited non-zero.
exit_messages=("simulated failure (exit)")
mpirun --version 2>&1 | grep -q "Open MPI" && exit_messages+=("non-zero")
run_failure 3 cpu exit "${exit_messages[@]}"
run_failure 3 cpu hang "simulated failure (hang)" "did not complete within $hang_timeout_s s"

# The NCCL backend, on a machine with GPUs (one rank per GPU: NCCL refuses two ranks on one).
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [[ ${gpus:-0} -ge 1 ]]; then
  np=$((gpus >= 2 ? 2 : 1))
  "${mpirun_cmd[@]}" "$np" "$check" --device cuda >"$log" 2>&1
  status=$?
  if [[ $status -eq 77 ]]; then echo "skipped: cuda ($(grep -m1 SKIP "$log"))"
  elif [[ $status -eq 0 ]]; then
    echo "ok: collectives on cuda (NCCL) at np=$np"
    [[ $np -ge 2 ]] && run_failure "$np" cuda hang "simulated failure (hang)" "did not complete within $hang_timeout_s s"
  else fail "collectives on cuda at np=$np"; sed 's/^/  | /' "$log" | tail -n 30; fi
else
  echo "skipped: cuda (no GPU)"
fi

[[ $failures -eq 0 ]] && echo "test_comm_mpi: all checks passed" && exit 0
echo "test_comm_mpi: $failures check(s) failed"
exit 1
