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
# run_failure MODE EXPECTED_MESSAGE: the job must end non-zero within job_limit_s and print it.
run_failure() {
  local mode=$1 message=$2 start end status
  start=$(date +%s.%N)
  timeout "$job_limit_s" "${mpirun_cmd[@]}" 3 "$check" --timeout "$hang_timeout_s" --fail "$mode" >"$log" 2>&1
  status=$?
  end=$(date +%s.%N)
  local took
  took=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  if [[ $status -eq 0 ]]; then fail "--fail $mode: the job ended with status 0"
  elif [[ $status -eq 124 ]]; then fail "--fail $mode: the job hung past ${job_limit_s}s"
  elif ! grep -q -- "$message" "$log"; then fail "--fail $mode: no '$message' in the output"
  else echo "ok: --fail $mode ended with status $status after ${took}s, printing '$message'"; fi
  sed 's/^/  | /' "$log" | head -n 30
}
run_failure exit "simulated failure (exit)"
run_failure hang "did not complete within $hang_timeout_s s"

[[ $failures -eq 0 ]] && echo "test_comm_mpi: all checks passed" && exit 0
echo "test_comm_mpi: $failures check(s) failed"
exit 1
