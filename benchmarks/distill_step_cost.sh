#!/usr/bin/env bash
# CPU seconds per stage-2 step of a variant, single-threaded (threads=1: on a loaded machine the CPU
# time of one thread measures the work, where the wall time of several measures the scheduler):
# the CPU time of a run stopped after 110 steps minus one stopped after 10, over 100. Uses the
# caches of TEACHER_RUN (copied as benchmarks/distill_variant.sh does).
#   benchmarks/distill_step_cost.sh BUILD TEACHER_RUN NAME [--set key=value ...]
set -euo pipefail
BUILD=$1 TEACHER=$2 NAME=$3
shift 3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cpu_after() {  # cpu_after STEPS ARGS...: user + system seconds of sn_train stopped after STEPS steps
  local steps=$1 run="$ROOT/runs/distill/cost-$NAME-$1"; shift
  rm -rf "$run" && mkdir -p "$run/final"
  cp -r "$TEACHER/final/query_tower" "$TEACHER/final/doc_tower" "$run/final/"
  cp -r "$TEACHER/cache" "$run/"
  grep '"stage": 1' "$TEACHER/metrics.jsonl" > "$run/metrics.jsonl"
  TIMEFORMAT='%U %S'
  { time "$BUILD/sn_train" --config "$ROOT/configs/default.json" --stage 2 --set run_dir="$run" --set threads=1 \
      --stop-after "$steps" "$@" > /dev/null 2> "$run/log"; } 2>&1 | awk '{print $1 + $2}'
}
a=$(cpu_after 10 "$@")
b=$(cpu_after 110 "$@")
python3 -c "import sys; print(f'{sys.argv[1]:32s} {(float(sys.argv[3]) - float(sys.argv[2])) / 100 * 1000:.1f} CPU ms a step (1 thread)')" "$NAME" "$a" "$b"
