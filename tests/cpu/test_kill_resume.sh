#!/usr/bin/env bash
# SIGKILL at random moments (while loading, training, writing a checkpoint or a final tower, between
# the stages), at least KILLS times, with --resume auto after each: the run that finally completes
# must equal an uninterrupted one byte for byte (final towers) and step for step (metrics.jsonl).
# SN_KILL_SEED picks the moments (printed, to replay a failure).
set -euo pipefail
BUILD=$1
SRC=${SN_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
KILLS=${SN_KILLS:-20}
SEED=${SN_KILL_SEED:-$RANDOM}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
source "$SRC/tests/cpu/tiny_run.sh"
tiny_run_setup 100 60
start_ns=$(date +%s%N)
"$BUILD/sn_train" --config cfg.json --set run_dir=straight 2> straight.log || { tail straight.log; exit 1; }
# A kill comes 0..MAX_DELAY_MS after a start: KILLS kills average half a straight run, so
# they all land before the run can complete, however fast this machine is.
MAX_DELAY_MS=$(( ($(date +%s%N) - start_ns) / 1000000 / KILLS ))
[ $MAX_DELAY_MS -ge 20 ] || MAX_DELAY_MS=20

RANDOM=$SEED
kills=0 runs=0
while :; do
  runs=$((runs + 1))
  "$BUILD/sn_train" --config cfg.json --set run_dir=killed --resume auto 2>> killed.log &
  pid=$!
  if [ $kills -lt "$KILLS" ]; then
    delay_ms=$(( (RANDOM * 32768 + RANDOM) % MAX_DELAY_MS ))
    sleep "$((delay_ms / 1000)).$(printf '%03d' $((delay_ms % 1000)))"
    kill -9 $pid 2> /dev/null && kills=$((kills + 1))
  fi
  set +e; wait $pid 2> /dev/null; rc=$?; set -e
  [ $rc = 0 ] && break
  [ $rc = 137 ] || { echo "FAIL: run $runs exited $rc (seed $SEED)"; tail -5 killed.log; exit 1; }
  [ $runs -lt $((KILLS * 5)) ] || { echo "FAIL: no progress after $runs runs (seed $SEED)"; exit 1; }
done
if [ $kills -lt "$KILLS" ]; then echo "FAIL: only $kills kills before the run ended (seed $SEED)"; exit 1; fi
same_run straight killed "after $kills kills (seed $SEED)" || exit 1
echo "test_kill_resume: $kills SIGKILLs (0..$MAX_DELAY_MS ms after each start) in $runs runs (seed $SEED," \
     "$(grep -c 'resume: stage' killed.log) resumes from a checkpoint): final towers and metrics equal to the" \
     "uninterrupted run"
