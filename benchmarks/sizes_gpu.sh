#!/usr/bin/env bash
# Stage 1 of every ready tower shape on the GPU, random init, a few steps each: step time, tokens/s,
# MFU (benchmarks/throughput.py), the memory plan's figure for the stage, the allocator's measured
# high-water mark (what the plan predicts) and the peak device memory nvidia-smi saw (which adds the
# CUDA context, cuBLAS and NCCL).
# Queries are cut to 32 tokens and documents to 128 (synthetic long texts, 1 hard negative each).
# usage: benchmarks/sizes_gpu.sh BUILD_DIR OUT_DIR [NAME ...]   (default: every shape below)
# STEPS (default 12) steps a shape; a run that fails prints its error lines and the next one runs.
# Writes OUT_DIR/sizes.jsonl (one line a shape) and OUT_DIR/sizes_<name>.log.
set -uo pipefail
BUILD=$(cd "$1" && pwd)
OUT=$(mkdir -p "$2" && cd "$2" && pwd)
shift 2
SRC=$(cd "$(dirname "$0")/.." && pwd)
STEPS=${STEPS:-12}
MEMORY_POLL_MS=200   # nvidia-smi sampling period of the peak-memory watcher
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# name | tower description | queries a step | stage1 keys beyond the defaults | stage1.optim keys beyond them
# (the -bf16 shapes: the bf16 optimizer state, docs/DESIGN.md)
BF16_STATE='"state_dtype": "bf16",'
SHAPES=(
  "0.5b|qwen2.5-0.5b.json|64||"
  "1.5b|qwen2.5-1.5b.json|32||"
  "1.5b-bf16|qwen2.5-1.5b.json|32||$BF16_STATE"
  "7b-shared-gc|qwen2.5-7b.json|64|\"shared_towers\": true, \"grad_cache_chunk\": 32, \"recompute\": \"layer\",|"
  "7b-lora|qwen2.5-7b.json|64|\"lora\": {\"rank\": 32, \"alpha\": 64}, \"recompute\": \"layer\",|"
  "7b-bf16-gc|qwen2.5-7b.json|64|\"grad_cache_chunk\": 32, \"recompute\": \"layer\",|$BF16_STATE"
)
wanted() { local n; for n in "${@:2}"; do [ "$n" = "$1" ] && return 0; done; return 1; }

cd "$WORK"
python3 "$SRC/tests/synth_data.py" data --examples 4096 --test-queries 8 --query-words 40 --doc-words 160 >/dev/null
: >"$OUT/sizes.jsonl"
printf '%-14s %8s %9s %8s %6s %8s %9s %8s  %s\n' shape s/step tok/s TFLOP/s MFU plan_GiB alloc_GiB smi_GiB status
for spec in "${SHAPES[@]}"; do
  IFS='|' read -r name desc queries extra optim <<<"$spec"
  if [ $# -gt 0 ] && ! wanted "$name" "$@"; then continue; fi
  rm -rf run
  cat >cfg.json <<JSON
{"run_dir": "run", "device": "cuda", "seed": 1,
 "data": {"train": ["data/train.jsonl"], "query_prompt": "{text}", "doc_prompt": "{text}",
          "max_query_len": 32, "max_doc_len": 128},
 "stage1": {"model_desc": "$SRC/configs/models/$desc", $extra
            "tokenizer": "$SRC/configs/default/decoder/tokenizer.json",
            "batch_queries": $queries, "negatives_per_query": 1, "steps": $STEPS,
            "optim": {$optim "lr": 1e-5, "warmup_steps": 2}},
 "checkpoint": {"every": 0}, "log": {"every": 1}}
JSON
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms $MEMORY_POLL_MS \
    >memory.txt 2>/dev/null &
  watcher=$!
  "$BUILD/sn_train" --config cfg.json --stage 1 >"$OUT/sizes_$name.log" 2>&1
  rc=$?
  kill $watcher 2>/dev/null; wait $watcher 2>/dev/null
  peak_mib=$(sort -n memory.txt | tail -1)
  python3 - "$name" "$rc" "${peak_mib:-0}" "$SRC" "$desc" "$queries" "$OUT" <<'PY'
import json, os, re, sys
name, rc, peak_mib, src, desc, queries, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), *sys.argv[4:]
GIB = 1024 ** 3
sys.path.insert(0, f"{src}/benchmarks")
from throughput import summarize
row = dict(shape=name, desc=desc, queries=int(queries), rc=rc, peak_gib=peak_mib / 1024)
rows = [json.loads(l) for l in open("run/metrics.jsonl")] if os.path.exists("run/metrics.jsonl") else []
try:
    row.update(summarize(rows, 1, f"{src}/configs/models/{desc}", int(queries), 32, 128))
except SystemExit as e:
    row["error"] = str(e)
if rc != 0:
    errs = [l.strip() for l in open(f"{out}/sizes_{name}.log") if "error" in l.lower()]
    row["error"] = errs[-1] if errs else f"exit {rc}"
for line in open(f"{out}/sizes_{name}.log"):  # "stage 1: memory peak ... (...; MEASURED and PLANNED bytes)"
    m = re.search(r"stage 1: memory peak .*; (\d+) and (\d+) bytes", line)
    if m:
        row["alloc_gib"], row["plan_gib"] = int(m.group(1)) / GIB, int(m.group(2)) / GIB
        row["plan_vs_alloc"] = row["plan_gib"] / row["alloc_gib"] - 1
status = row.get("error", "ok")
f = lambda k, fmt: format(row[k], fmt) if k in row else "-"
print(f"{name:14s} {f('step_s', '8.4f'):>8s} {f('tok_s', '9.0f'):>9s} {f('tflops', '8.1f'):>8s} "
      f"{f('mfu', '6.3f'):>6s} {f('plan_gib', '8.2f'):>8s} {f('alloc_gib', '9.2f'):>9s} {row['peak_gib']:8.1f}  {status}")
open(f"{out}/sizes.jsonl", "a").write(json.dumps(row) + "\n")
PY
done
