#!/usr/bin/env bash
# Stage 1 on real lengths: SciFact's training queries and documents (benchmarks/scifact_train.py),
# tokenized with ../shared/tokenizers/qwen3, queries cut to 64 tokens and documents to 512 (title and
# text, 1 random negative each). sn_train packs the sequences; the PyTorch + transformers baseline
# (benchmarks/torch_real_lengths.py) pads each batch to its longest one. Both count real tokens only.
# usage: benchmarks/real_lengths_gpu.sh BUILD_DIR OUT_DIR [SHAPE ...]   (shapes below; default 0.5b 1.5b)
# SHARED (default: the repo's sibling ../shared, else ./shared) holds data/scifact and tokenizers/qwen3.
# STEPS (default 20) timed steps a run; RUN_TIMEOUT_S (default 130) caps each of the four runs.
# Writes OUT_DIR/real_lengths.jsonl (one line a shape and trainer), the sn_train logs and metrics.
set -euo pipefail
BUILD=$(cd "$1" && pwd)
OUT=$(mkdir -p "$2" && cd "$2" && pwd)
shift 2
SRC=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${SHARED:-}" ]; then
  SHARED="$SRC/../shared"
  [ -d "$SHARED/data/scifact" ] || [ ! -d "$SRC/shared" ] || SHARED="$SRC/shared"  # the device copy
fi
[ -d "$SHARED" ] || { echo "real_lengths: no shared folder at $SHARED (set SHARED)" >&2; exit 77; }
SHARED=$(cd "$SHARED" && pwd)
export SHARED  # scifact_train.py reads it
TOKENIZER="$SHARED/tokenizers/qwen3"
STEPS=${STEPS:-20}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-130}   # 4 runs x (130 + grace) s stay inside a 10-minute call if all hang
KILL_GRACE_S=10                       # SIGKILL this long after the SIGTERM of a timed-out run
MAX_QUERY_LEN=64
MAX_DOC_LEN=512
# throughput.py's clock starts at the end of step WARMUP_ROWS + 1 = 5: the steps before include
# allocation and warm-up. (torch_real_lengths.py runs its own 3 untimed steps.)
SN_UNTIMED_STEPS=5

# name | tower description | queries a step | recompute (stage1.recompute; PyTorch's gradient
# checkpointing when "layer"). 0.5b and 1.5b need the H200's 141 GB; the -80g shapes fit an 80 GB card
# (sn_train --plan: 48.2 and 54 GiB), where PyTorch ran out of memory at 0.5b and 1.5b.
SHAPES=(
  "0.5b|qwen2.5-0.5b.json|64|none"
  "1.5b|qwen2.5-1.5b.json|32|none"
  "0.5b-80g|qwen2.5-0.5b.json|32|none"
  "1.5b-80g|qwen2.5-1.5b.json|32|layer"
)
[ $# -gt 0 ] || set -- 0.5b 1.5b
for want in "$@"; do  # before any work: a typo should not cost a GPU call's minutes
  printf '%s\n' "${SHAPES[@]}" | grep -q "^$want|" || { echo "real_lengths: unknown shape $want" >&2; exit 2; }
done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
[ -f "$TOKENIZER/tokenizer.json" ] || { echo "real_lengths: no tokenizer in $TOKENIZER" >&2; exit 77; }
rc=0; python3 "$SRC/benchmarks/scifact_train.py" train.jsonl || rc=$?
[ $rc -eq 0 ] || exit $rc

: >"$OUT/real_lengths.jsonl"
for want in "$@"; do
  spec=$(printf '%s\n' "${SHAPES[@]}" | grep "^$want|")
  IFS='|' read -r name desc queries recompute <<<"$spec"
  torch_ckpt=()
  [ "$recompute" = none ] || torch_ckpt=(--gradient-checkpointing)

  # ---- sn_train: SN_UNTIMED_STEPS + STEPS steps, the last STEPS timed by throughput.py
  rm -rf run
  cat >cfg.json <<JSON
{"run_dir": "run", "device": "cuda", "seed": 1,
 "data": {"train": ["train.jsonl"], "query_prompt": "{text}", "doc_prompt": "{title} {text}",
          "max_query_len": $MAX_QUERY_LEN, "max_doc_len": $MAX_DOC_LEN},
 "stage1": {"model_desc": "$SRC/configs/models/$desc", "tokenizer": "$TOKENIZER",
            "batch_queries": $queries, "recompute": "$recompute", "negatives_per_query": 1, "steps": $((SN_UNTIMED_STEPS + STEPS)),
            "optim": {"lr": 1e-5, "warmup_steps": 2}},
 "checkpoint": {"every": 0}, "log": {"every": 1}}
JSON
  sn_rc=0
  timeout -k $KILL_GRACE_S "$RUN_TIMEOUT_S" "$BUILD/sn_train" --config cfg.json --stage 1 \
    >"$OUT/real_lengths_${name}_sn.log" 2>&1 || sn_rc=$?
  # metrics.jsonl is flushed a line at a time: a run killed while saving keeps its steps
  [ ! -f run/metrics.jsonl ] || cp run/metrics.jsonl "$OUT/real_lengths_${name}_metrics.jsonl"

  # ---- PyTorch: 3 untimed steps + STEPS timed
  torch_rc=0
  timeout -k $KILL_GRACE_S "$RUN_TIMEOUT_S" python3 "$SRC/benchmarks/torch_real_lengths.py" \
    --data train.jsonl --desc "$SRC/configs/models/$desc" --tokenizer "$TOKENIZER" \
    --batch-queries "$queries" --max-query-len $MAX_QUERY_LEN --max-doc-len $MAX_DOC_LEN \
    --steps "$STEPS" --name "$name" "${torch_ckpt[@]}" >torch.json 2>"$OUT/real_lengths_${name}_torch.log" || torch_rc=$?

  python3 - "$name" "$desc" "$queries" "$sn_rc" "$torch_rc" "$SRC" "$OUT" "$RUN_TIMEOUT_S" <<'PY'
import json, os, sys
name, desc, queries, sn_rc, torch_rc, src, out, limit_s = sys.argv[1:]
TIMED_OUT = ("124", "137")  # timeout(1): SIGTERM sent, or SIGKILL after the grace
sys.path.insert(0, f"{src}/benchmarks")
from throughput import WARMUP_ROWS, summarize

def last_error(log, rc):
    if rc in TIMED_OUT:
        return f"timed out after {limit_s} s"
    lines = [l.strip() for l in open(log) if "error" in l.lower()] if os.path.exists(log) else []
    return lines[-1] if lines else f"exit {rc}"

ours = dict(trainer="sn_train", shape=name, desc=desc, queries=int(queries), rc=int(sn_rc))
metrics = f"{out}/real_lengths_{name}_metrics.jsonl"
rows = [json.loads(l) for l in open(metrics)] if os.path.exists(metrics) else []
try:  # no B: 6N-only FLOPs, whose MFU would mislead at varying lengths, so only time and tokens
    s = summarize(rows, 1, f"{src}/configs/models/{desc}")
    # the rows summarize times: those after row WARMUP_ROWS
    timed = [r for r in rows if r.get("stage") == 1 and "step" in r][WARMUP_ROWS + 1:]
    ours.update(step_s=s["step_s"], real_tok_s=s["tok_s"],
                real_tokens_step=sum(r["tokens"] for r in timed) / len(timed),
                peak_gib=max(r["mem_peak_gib"] for r in rows), steps_timed=len(timed))
except SystemExit as e:
    ours["error"] = str(e)
if int(sn_rc) != 0 and "real_tok_s" not in ours:
    ours["error"] = last_error(f"{out}/real_lengths_{name}_sn.log", sn_rc)

theirs = dict(trainer="torch", shape=name, desc=desc, queries=int(queries), rc=int(torch_rc))
try:
    theirs.update(json.loads(open("torch.json").read().strip().splitlines()[-1]))
except (IndexError, ValueError):
    theirs["error"] = last_error(f"{out}/real_lengths_{name}_torch.log", torch_rc)
with open(f"{out}/real_lengths.jsonl", "a") as f:
    f.write(json.dumps(ours) + "\n" + json.dumps(theirs) + "\n")
PY
done

# ---- the side-by-side table
python3 - "$OUT/real_lengths.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
f = lambda r, k, fmt: format(r[k], fmt) if k in r else "-"
print(f"{'shape':6s} {'ours s/step':>11s} {'ours tok/s':>10s} {'torch s/step':>12s} {'torch tok/s':>11s} "
      f"{'speed-up':>8s} {'torch pad':>9s}  real tokens/step ours|torch   status")
for shape in dict.fromkeys(r["shape"] for r in rows):
    o = next(r for r in rows if r["shape"] == shape and r["trainer"] == "sn_train")
    t = next(r for r in rows if r["shape"] == shape and r["trainer"] == "torch")
    up = f"{o['real_tok_s'] / t['real_tok_s']:.2f}x" if "real_tok_s" in o and "real_tok_s" in t else "-"
    status = "; ".join(f"{r['trainer']}: {r['error']}" for r in (o, t) if "error" in r) or "ok"
    print(f"{shape:6s} {f(o, 'step_s', '11.4f'):>11s} {f(o, 'real_tok_s', '10.0f'):>10s} "
          f"{f(t, 'step_s', '12.4f'):>12s} {f(t, 'real_tok_s', '11.0f'):>11s} {up:>8s} "
          f"{f(t, 'pad_frac', '9.3f'):>9s}  {f(o, 'real_tokens_step', '.0f')}|{f(t, 'real_tokens_step', '.0f')}   {status}")
PY
