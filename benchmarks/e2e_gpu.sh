#!/usr/bin/env bash
# End-to-end GPU throughput of sn_train beside the PyTorch + transformers baseline, in one run:
#   stage 1, Qwen2.5-0.5B-shaped towers (random init), 64 queries x 32 tokens + 128 documents x 128
#   tokens (1 hard negative each) per step; stage 2, the 6-layer 384-wide student, 256 queries x 32.
# usage: benchmarks/e2e_gpu.sh BUILD_DIR OUT_DIR [TORCH_BASELINE_PY]
# Prints a table and writes OUT_DIR/e2e.json; tokens/s and MFU as benchmarks/throughput.py computes
# them (the baseline's formula).
set -euo pipefail
BUILD=$(cd "$1" && pwd)
OUT=$(mkdir -p "$2" && cd "$2" && pwd)
BASELINE=${3:+$(cd "$(dirname "$3")" && pwd)/$(basename "$3")}
SRC=$(cd "$(dirname "$0")/.." && pwd)
STEPS=${STEPS:-30}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
# Long random texts so that every query is cut to exactly 32 tokens and every document to 128.
python3 "$SRC/tests/synth_data.py" data --examples 4096 --test-queries 8 --query-words 40 --doc-words 160
cat > cfg.json <<JSON
{"run_dir": "run", "device": "cuda", "seed": 1,
 "data": {"train": ["data/train.jsonl"], "query_prompt": "{text}", "doc_prompt": "{text}",
          "max_query_len": 32, "max_doc_len": 128},
 "stage1": {"model_desc": "$SRC/configs/models/qwen2.5-0.5b.json",
            "tokenizer": "$SRC/configs/default/decoder/tokenizer.json",
            "batch_queries": 64, "negatives_per_query": 1, "steps": $STEPS, "optim": {"lr": 1e-5, "warmup_steps": 2}},
 "stage2": {"student_desc": "$SRC/configs/models/student-6l-384.json",
            "tokenizer": "$SRC/configs/default/decoder/tokenizer.json", "pooling": "last",
            "batch_queries": 256, "steps": $STEPS, "optim": {"lr": 1e-4, "warmup_steps": 2}},
 "log": {"every": 5}}
JSON
"$BUILD/sn_train" --config cfg.json 2>&1 | grep -E "stage . \| step|error" || true
cp run/metrics.jsonl "$OUT/e2e_metrics.jsonl"
if [ -n "$BASELINE" ]; then
  python3 - "$BASELINE" > "$OUT/e2e_torch.jsonl" <<'PY'
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("tb", sys.argv[1]); tb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tb)
print(json.dumps(tb.ceilings()), flush=True)
print(json.dumps(tb.stage1("0.5B", 64, 32, 128)), flush=True)
print(json.dumps(tb.stage1("0.5B", 64, 32, 128, dtype_mode="bf16")), flush=True)
print(json.dumps(tb.stage2("0.5B", "student-6L384", 256, 32)), flush=True)
PY
fi
python3 - "$OUT" "$SRC" <<'PY'
import json, os, sys
out, src = sys.argv[1], sys.argv[2]
sys.path.insert(0, f"{src}/benchmarks")
from throughput import summarize
rows = [json.loads(l) for l in open(f"{out}/e2e_metrics.jsonl")]
# the teacher's query embeddings are cached in stage 2: no teacher forward per step
res = {1: summarize(rows, 1, f"{src}/configs/models/qwen2.5-0.5b.json", 64, 32, 128),
       2: summarize(rows, 2, f"{src}/configs/models/student-6l-384.json")}
base = {}
p = f"{out}/e2e_torch.jsonl"
if os.path.exists(p):
    for l in open(p):
        x = json.loads(l); base[(x["work"], x.get("mode", ""))] = x
print(f"{'workload':58s} {'s/step':>8s} {'tok/s':>9s} {'TFLOP/s':>8s} {'MFU':>6s}")
def row(name, x): print(f"{name:58s} {x['step_s']:8.4f} {x['tok_s']:9.0f} {x['tflops']:8.1f} {x['mfu']:6.3f}")
row("sn_train stage 1, 0.5B towers, bf16", res[1])
for mode in ("amp", "bf16"):
    if ("stage1", mode) in base: row(f"PyTorch stage 1, 0.5B towers, {mode}", base[("stage1", mode)])
row("sn_train stage 2, 0.5B teacher (cached) -> 6L-384 student", res[2])
if ("stage2", "") in base: row("PyTorch stage 2, 0.5B teacher (per step) -> 6L-384 student", base[("stage2", "")])
json.dump(dict(sn_train=res, torch=list(base.values())), open(f"{out}/e2e.json", "w"), indent=1)
PY
