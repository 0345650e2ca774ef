#!/usr/bin/env bash
# Non-finite values during training (stage 1, CPU backend):
#  - a real NaN loss (a model whose q/k projections are 1e30: the attention logits overflow) stops
#    the run at step 1 with exit 1 naming the stage, the step and the value; no checkpoint or final
#    tower is written. With train.skip_nonfinite every step is skipped and counted, and the
#    checkpoints and final towers (weights whose squares overflow) are refused.
#  - a NaN loss at step 4 (test hook SN_TEST_NAN_LOSS_STEPS) stops the run with ckpt-1-3 named and
#    intact: resuming from it ends bit-identical to an uninterrupted run (the NaN step made no update).
#  - with train.skip_nonfinite the NaN steps 2 and 5 are skipped (lr 0 logged), counted in
#    metrics.jsonl and on the progress line, and the count survives a resume (state.bin).
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
sn_test_needs_python numpy safetensors
python3 "$SRC/tests/synth_data.py" data --examples 48 --test-queries 4 >/dev/null
cat > cfg.json <<JSON
{"run_dir": "run", "seed": 5, "threads": 1,
 "data": {"train": ["data/train.jsonl"], "max_query_len": 12, "max_doc_len": 24, "doc_prompt": "{title} {text}"},
 "stage1": {"model_desc": {"arch": "qwen2", "layers": 1, "hidden": 32, "heads": 2, "kv_heads": 1,
                           "intermediate": 64, "vocab": 4096},
            "tokenizer": "$SRC/configs/default/decoder/tokenizer.json",
            "batch_queries": 8, "negatives_per_query": 1, "steps": 6, "optim": {"lr": 1e-3, "warmup_steps": 1}},
 "checkpoint": {"every": 1, "keep": 2}}
JSON
TRAIN="$BUILD/sn_train --config cfg.json --stage 1"
fail=0
bad() { echo "FAIL: $*"; fail=1; }
# run NAME EXPECTED_RC ARGS...: sn_train with run_dir=NAME, log in NAME.log
run() {
  local name=$1 want=$2 rc=0; shift 2
  $TRAIN --set run_dir="$name" "$@" > "$name.log" 2>&1 || rc=$?
  [ "$rc" = "$want" ] || { bad "$name: exit $rc, expected $want"; tail -5 "$name.log"; }
}
has() { grep -qE -- "$2" "$1" || { bad "$1 lacks '$2'"; tail -3 "$1"; }; }
metric() {  # metric RUN STEP KEY: the value of KEY in RUN/metrics.jsonl's record of STEP ("absent")
  python3 -c 'import json,sys
for l in open(sys.argv[1] + "/metrics.jsonl"):
    r = json.loads(l)
    if r["step"] == int(sys.argv[2]): print(r.get(sys.argv[3], "absent"))' "$@"
}

run straight 0
[ -f straight/final/query_tower/model.safetensors ] || bad "the straight run wrote no final tower"

# ---- a real NaN: attention logits past the float range --------------------------------------------
cp -r straight/final/query_tower huge
python3 - <<'PY'
from safetensors.numpy import load_file, save_file
t = load_file("huge/model.safetensors")
for k in ("layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight"): t[k][:] = 1e30
save_file(t, "huge/model.safetensors", metadata={"format": "pt"})
PY
run real 1 --set stage1.model=huge --set stage1.model_desc=
has real.log "error: stage 1: the loss is -?nan at step 1; stopped before its optimizer update \(no checkpoint"
[ -z "$(ls -d real/ckpt-* real/final 2>/dev/null)" ] || bad "the NaN run wrote $(ls -d real/ckpt-* real/final)"
run real_skip 1 --set stage1.model=huge --set stage1.model_desc= --set train.skip_nonfinite=true
has real_skip.log "stage 1: the loss is -?nan at step 6: step skipped without an optimizer update \(6 skipped"
has real_skip.log "checkpoint at stage 1 step 1 refused, the previous checkpoint is kept: the trained query weights are not finite"
has real_skip.log "error: stage 1: refusing to write the final towers: the trained query weights are not finite"
[ -z "$(ls -d real_skip/ckpt-* real_skip/final 2>/dev/null)" ] || bad "non-finite weights were written: $(ls -d real_skip/ckpt-* real_skip/final)"

# ---- stop at a NaN step with the last good checkpoint intact -------------------------------------
SN_TEST_NAN_LOSS_STEPS=4 run stop 1
has stop.log "error: stage 1: the loss is nan at step 4; stopped before its optimizer update \(stop/ckpt-1-3 is the last good state\)"
[ -d stop/ckpt-1-3 ] && [ ! -e stop/ckpt-1-4 ] && [ ! -e stop/final ] || bad "stop: expected ckpt-1-3 only: $(ls stop)"
[ "$(metric stop 4 loss)" = None ] || bad "stop: metrics.jsonl's step 4 loss is $(metric stop 4 loss), expected null"
run stop 0 --resume auto
cmp -s straight/final/query_tower/model.safetensors stop/final/query_tower/model.safetensors ||
  bad "resuming after the NaN step does not give the uninterrupted run's tower"

# ---- skip and count ---------------------------------------------------------------------------
SN_TEST_NAN_LOSS_STEPS=2,5 run skip 0 --set train.skip_nonfinite=true --stop-after 3
has skip.log "stage 1: the loss is nan at step 2: step skipped without an optimizer update \(1 skipped in this stage\)"
SN_TEST_NAN_LOSS_STEPS=2,5 run skip 0 --set train.skip_nonfinite=true --resume auto
has skip.log "stage 1 \| step 6/6 \|.*\| skipped 2 \|"
[ -f skip/final/query_tower/model.safetensors ] || bad "skip: no final tower"
got="$(metric skip 2 lr) $(metric skip 4 skipped_nonfinite) $(metric skip 5 lr) $(metric skip 6 skipped_nonfinite) $(metric skip 1 skipped_nonfinite)"
[ "$got" = "0 1 0 2 absent" ] ||
  bad "skip: metrics (lr@2, skipped@4 after the resume, lr@5, skipped@6, skipped@1) are '$got', expected '0 1 0 2 absent'"

[ $fail = 0 ] && echo "test_train_nonfinite: all checks passed"
exit $fail
