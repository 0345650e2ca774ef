#!/usr/bin/env bash
# A stage-0-pretrained decoder student for the default run (docs/PERFORMANCE.md, "Distillation
# quality"): pretrains a small Qwen2-shaped decoder with the causal-LM loss on the default data's
# training documents (the positives of runs/default-data/train.jsonl; never the test queries or the
# test corpus), then distils it with benchmarks/distill_variant.sh, last-token pooling, its own
# tokenizer (the default decoder's).
#   benchmarks/distill_stage0_student.sh BUILD TEACHER_RUN NAME STAGE0_STEPS [--set key=value ...]
set -euo pipefail
BUILD=$1 TEACHER=$2 NAME=$3 STEPS=$4
shift 4
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LM="$ROOT/runs/distill/$NAME-stage0"
mkdir -p "$LM"
python3 - "$ROOT/runs/default-data/train.jsonl" "$LM/text.jsonl" <<'PY'
import json, sys
seen = set()
with open(sys.argv[2], "w") as out:
    for line in open(sys.argv[1]):
        for doc in json.loads(line)["pos"]:
            text = doc["text"] if isinstance(doc, dict) else doc
            if text not in seen:
                seen.add(text)
                out.write(json.dumps({"text": text}) + "\n")
PY
cat > "$LM/pretrain.json" <<JSON
{"run_dir": "$LM/run", "seed": 1234,
 "stage0": {"model_desc": {"arch": "qwen2", "layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2,
                           "intermediate": 256, "vocab": 4096, "max_positions": 512, "tie": true},
            "tokenizer": "$ROOT/configs/default/decoder/tokenizer.json", "data": ["$LM/text.jsonl"],
            "seq_len": 64, "batch_seqs": 32, "steps": $STEPS,
            "optim": {"lr": 2e-3, "warmup_steps": 20}},
 "checkpoint": {"every": 0}}
JSON
TIMEFORMAT='stage 0: wall %R s, CPU %U + %S s'
time "$BUILD/sn_train" --config "$LM/pretrain.json" --stage 0 --overwrite > "$LM/stdout" 2> "$LM/log" ||
  { tail -20 "$LM/log"; exit 1; }
grep -o "loss [0-9.]*" "$LM/log" | tail -1
# student_from_teacher off: the default cuts the student from the teacher, exclusive with a student folder
"$ROOT/benchmarks/distill_variant.sh" "$BUILD" "$TEACHER" "$NAME" --set stage2.student_from_teacher=0 \
  --set stage2.student_desc= --set stage2.student="$LM/run/final/lm" --set stage2.tokenizer= --set stage2.pooling=last "$@"
