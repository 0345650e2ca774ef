#!/usr/bin/env bash
# One stage-2 variant of the default run on a finished run's stage-1 towers (docs/PERFORMANCE.md,
# "Distillation quality"): copies TEACHER_RUN's final/{query_tower,doc_tower}, cache/ and stage-1
# records into runs/distill/NAME, runs `sn_train --stage 2` there with configs/default.json and the
# given --set overrides, and prints one line: name, student nDCG@10 and R@100, their ratio to the
# teacher's (TEACHER_RUN/eval/stage1.json), and stage 2's wall and CPU (user + system) time with
# the student's evaluation (on a loaded machine the CPU time is the steadier figure).
#   benchmarks/distill_variant.sh BUILD TEACHER_RUN NAME [--set key=value ...]
set -euo pipefail
BUILD=$1 TEACHER=$2 NAME=$3
shift 3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN="$ROOT/runs/distill/$NAME"
rm -rf "$RUN" && mkdir -p "$RUN/final" "$RUN/eval"
cp -r "$TEACHER/final/query_tower" "$TEACHER/final/doc_tower" "$RUN/final/"
cp -r "$TEACHER/cache" "$RUN/"
grep '"stage": 1' "$TEACHER/metrics.jsonl" > "$RUN/metrics.jsonl"
TIMEFORMAT='%R %U %S'
{ time "$BUILD/sn_train" --config "$ROOT/configs/default.json" --stage 2 --set run_dir="$RUN" "$@" \
  > "$RUN/stdout" 2> "$RUN/log" || { tail -20 "$RUN/log"; exit 1; }; } 2> "$RUN/time"
python3 - "$RUN" "$TEACHER" "$NAME" $(cat "$RUN/time") <<'PY'
import json, sys
run, teacher, name = sys.argv[1], sys.argv[2], sys.argv[3]
wall, cpu = float(sys.argv[4]), float(sys.argv[5]) + float(sys.argv[6])
t = json.load(open(f"{teacher}/eval/stage1.json"))
s = json.load(open(f"{run}/eval/student.json"))
print(f"{name:32s} nDCG@10 {s['ndcg@10']:.4f} R@100 {s['recall@100']:.3f} "
      f"ratio {s['ndcg@10'] / t['ndcg@10'] * 100:.1f}% R@100 {s['recall@100'] / t['recall@100'] * 100:.1f}% "
      f"stage 2 + eval: wall {wall:.0f} s, CPU {cpu:.0f} s", flush=True)
PY
