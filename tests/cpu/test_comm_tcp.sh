#!/usr/bin/env bash
# The TCP communicator (--device cpu without MPI: dist/comm_tcp.c): every collective at 2 and 3
# ranks started with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (tests/mpi/mpi_comm_check.c, which
# also runs under mpirun: the sums must be the local rank-order sums bit for bit), then the failure
# modes, which must end every rank with an error within a bound, never hang:
#   exit: rank 1 exits(1) mid-run -> rank 0 sees its connection close and names it;
#   hang: rank 1 stops calling collectives -> the watchdog ends the others after --timeout (the
#         test then kills rank 1, as the launcher would).
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
set +e  # each check records its failure and the test goes on
check=$BUILD/tests/mpi_comm_check
[[ -x $check ]] || { echo "FAIL: $check not built"; exit 1; }
export OMP_NUM_THREADS=1
JOB_LIMIT_S=60     # the bound a failed job must end within
HANG_TIMEOUT_S=3   # the communicator's timeout in the hang test
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# start_ranks NP ARGS...: NP processes of mpi_comm_check on one port, each rank's output in
# rank-R.log, their pids in PIDS.
start_ranks() {
  local np=$1 port=$((40000 + RANDOM % 20000)) r
  shift
  PIDS=()
  for ((r = 0; r < np; r++)); do
    RANK=$r WORLD_SIZE=$np MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      timeout "$JOB_LIMIT_S" "$check" "$@" > "$WORK/rank-$r.log" 2>&1 &
    PIDS+=($!)
  done
}

# wait_ranks [SKIP]: waits for every rank but SKIP; 0 only if all exited 0, 124 if one was still
# running after JOB_LIMIT_S, else the first non-zero status.
wait_ranks() {
  local skip=${1:--1} r s status=0
  for r in "${!PIDS[@]}"; do
    [[ $r -eq $skip ]] && continue
    wait "${PIDS[$r]}"
    s=$?
    [[ $s -eq 124 ]] && status=124
    [[ $s -ne 0 && $status -eq 0 ]] && status=$s
  done
  return $status
}

for np in 2 3; do
  start_ranks $np
  if wait_ranks; then
    echo "ok: collectives at np=$np"
  else
    fail "collectives at np=$np"
    tail -n 20 "$WORK"/rank-*.log
  fi
done

# failure NP MODE MESSAGE: the ranks must end non-zero within JOB_LIMIT_S, MESSAGE in some log.
failure() {
  local np=$1 mode=$2 message=$3 start status
  start=$SECONDS
  start_ranks "$np" --timeout "$HANG_TIMEOUT_S" --fail "$mode"
  # A hanging rank 1 never ends by itself (srun --kill-on-bad-exit or mpirun would kill it once the
  # others fail): the others must end on their own, then the test kills it.
  if [[ $mode == hang ]]; then
    wait_ranks 1
    status=$?
    kill "${PIDS[1]}" 2>/dev/null
    wait "${PIDS[1]}" 2>/dev/null
  else
    wait_ranks
    status=$?
  fi
  if [[ $status -eq 0 ]]; then fail "--fail $mode: every rank ended with status 0"
  elif [[ $status -eq 124 ]]; then fail "--fail $mode: a rank hung past ${JOB_LIMIT_S}s"
  elif ! grep -q -- "$message" "$WORK"/rank-*.log; then  # not cat | grep -q: under pipefail, cat's SIGPIPE fails it
    fail "--fail $mode: no '$message' in the output"
    tail -n 5 "$WORK"/rank-*.log
  else
    echo "ok: np=$np --fail $mode ended within $((SECONDS - start)) s: $(grep -h -m1 -- "$message" "$WORK"/rank-*.log | head -1)"
  fi
}
failure 3 exit "the connection to rank 1 was closed"
failure 3 hang "did not complete within $HANG_TIMEOUT_S s"

[[ $failures -eq 0 ]] && echo "test_comm_tcp: all checks passed" && exit 0
echo "test_comm_tcp: $failures check(s) failed"
exit 1
