#!/usr/bin/env bash
# SIGKILL at random moments (while loading, training, writing a checkpoint or a final tower, between
# the stages), at least KILLS times, with --resume auto after each: the run that finally completes
# must equal an uninterrupted one byte for byte (final towers) and step for step (metrics.jsonl).
# SN_KILL_SEED picks the moments (printed with the result; the machine's timing makes a replay close,
# not exact).
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
KILLS=${SN_KILLS:-20}
SEED=${SN_KILL_SEED:-$RANDOM}
source "$SRC/tests/cpu/tiny_run.sh"
tiny_run_setup 100 60
"$BUILD/sn_train" --config cfg.json --set run_dir=straight 2> straight.log || { tail straight.log; exit 1; }
TOTAL=$(wc -l < straight/metrics.jsonl)  # steps of both stages

lines() { if [ -f killed/metrics.jsonl ]; then wc -l < killed/metrics.jsonl; else echo 0; fi; }
sleep_ms() { sleep "$(($1 / 1000)).$(printf '%03d' $(($1 % 1000)))"; }
# The moment of the next kill. Every fourth: 0..STARTUP_MS after the start (loading, validating the
# checkpoint, the first step). The others: a random step ahead (spread so that the kills cover both
# stages), then 0..JITTER_MS more (inside a step, a checkpoint write, a final save).
STARTUP_MS=150 JITTER_MS=15 POLL_S=0.01
wait_for_kill_moment() {
  local k=$1 pid=$2
  if [ $((k % 4)) = 3 ]; then sleep_ms $((RANDOM % STARTUP_MS)); return; fi
  local cur span target
  cur=$(lines)
  span=$(( 2 * (TOTAL - cur) / (KILLS - k + 1) ))
  target=$(( cur + 1 + RANDOM % (span > 1 ? span : 1) ))
  [ $target -lt "$TOTAL" ] || target=$((TOTAL - 1))
  while [ "$(lines)" -lt $target ] && kill -0 $pid 2> /dev/null; do sleep $POLL_S; done
  sleep_ms $((RANDOM % JITTER_MS))
}

RANDOM=$SEED
kills=0 runs=0
while :; do
  runs=$((runs + 1))
  "$BUILD/sn_train" --config cfg.json --set run_dir=killed --resume auto 2>> killed.log &
  pid=$!
  if [ $kills -lt "$KILLS" ]; then
    wait_for_kill_moment $kills $pid
    kill -9 $pid 2> /dev/null && kills=$((kills + 1)) && echo "kill $kills at step line $(lines)" >> kills.txt
  fi
  set +e; wait $pid 2> /dev/null; rc=$?; set -e
  [ $rc = 0 ] && break
  [ $rc = 137 ] || { echo "FAIL: run $runs exited $rc (seed $SEED)"; tail -5 killed.log; exit 1; }
  [ $runs -lt $((KILLS * 5)) ] || { echo "FAIL: no progress after $runs runs (seed $SEED)"; exit 1; }
done
if [ $kills -lt "$KILLS" ]; then echo "FAIL: only $kills kills before the run ended (seed $SEED)"; exit 1; fi
same_run straight killed "after $kills kills (seed $SEED)" || exit 1
echo "test_kill_resume: $kills SIGKILLs (at metrics lines $(cut -d' ' -f6 kills.txt | tr '\n' ' ')of $TOTAL) in $runs runs (seed $SEED," \
     "$(grep -c 'resume: stage' killed.log) resumes from a checkpoint): final towers and metrics equal to the" \
     "uninterrupted run"
