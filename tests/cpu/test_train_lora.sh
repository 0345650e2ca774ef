#!/usr/bin/env bash
# LoRA stage 1 end to end on the CPU backend, over a base Hugging Face folder (itself written by a
# short full fine-tune, so stage1.model is a real folder):
# - N steps + stop + resume equals N steps straight (same metrics, byte-identical merged towers and
#   peft adapters), two adapters over one frozen base;
# - checkpoints hold only the adapters (peft folders) and state.bin, never a tower;
# - final/: merged query_tower, doc_tower (sn_embed loads them) and query_adapter, doc_adapter
#   whose adapter_config.json names the base;
# - one shared adapter: checkpoints hold one adapter, the two merged towers are identical;
# - dropout: resumes exactly, the gradient cache's re-run sees the first pass's masks;
# - bad stage1.lora settings exit 2 naming the key;
# - where torch + transformers + peft exist: PeftModel.from_pretrained(base, adapter) embeds like the
#   merged tower (fp32, relative 1e-4).
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
python3 "$SRC/tests/synth_data.py" data --examples 96 --test-queries 8 > /dev/null
TOKENIZER="$SRC/configs/default/decoder/tokenizer.json"
cat > base.json <<JSON
{"run_dir": "base", "seed": 3, "threads": 2,
 "data": {"train": ["data/train.jsonl"], "max_query_len": 12, "max_doc_len": 24, "doc_prompt": "{title} {text}"},
 "stage1": {"model_desc": {"arch": "qwen2", "layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2,
                           "intermediate": 64, "vocab": 4096},
            "tokenizer": "$TOKENIZER", "batch_queries": 8, "steps": 1, "shared_towers": true}}
JSON
"$BUILD/sn_train" --config base.json --stage 1 2> base.log || { cat base.log; exit 1; }
BASE="$WORK/base/final/query_tower"
cat > cfg.json <<JSON
{"run_dir": "run", "seed": 5, "threads": 2,
 "data": {"train": ["data/train.jsonl"], "max_query_len": 12, "max_doc_len": 24, "doc_prompt": "{title} {text}"},
 "stage1": {"model": "$BASE", "batch_queries": 8, "negatives_per_query": 1, "steps": 8, "symmetric": true,
            "lora": {"rank": 4, "alpha": 8, "targets": ["q", "k", "v", "o", "gate", "up", "down"]},
            "optim": {"lr": 1e-2, "warmup_steps": 2}},
 "checkpoint": {"every": 2, "keep": 2}}
JSON
fail=0
"$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=straight 2> straight.log || { cat straight.log; exit 1; }
grep -q "two adapters over one frozen base" straight.log || { echo "FAIL: no LoRA line"; cat straight.log; fail=1; }
"$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=resumed --stop-after 3 2> r1.log || { cat r1.log; exit 1; }
"$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=resumed --resume auto 2> r2.log || { cat r2.log; exit 1; }
grep -q "resume: stage 1, step 3" r2.log || { echo "FAIL: did not resume at step 3"; cat r2.log; fail=1; }
for f in query_tower/model.safetensors doc_tower/model.safetensors query_adapter/adapter_model.safetensors \
         doc_adapter/adapter_model.safetensors query_adapter/adapter_config.json; do
  cmp -s "straight/final/$f" "resumed/final/$f" || { echo "FAIL: final/$f differs between straight and resumed"; fail=1; }
done
strip() { python3 -c 'import json,sys
for l in open(sys.argv[1]):
    r=json.loads(l); r.pop("elapsed_s"); r.pop("mem_peak_gib"); print(json.dumps(r, sort_keys=True))' "$1"; }
diff <(strip straight/metrics.jsonl) <(strip resumed/metrics.jsonl) || { echo "FAIL: metrics differ"; fail=1; }
cmp -s straight/final/query_tower/model.safetensors straight/final/doc_tower/model.safetensors &&
  { echo "FAIL: the two adapters trained to the same towers"; fail=1; }
cmp -s straight/final/query_tower/model.safetensors "$BASE/model.safetensors" &&
  { echo "FAIL: the merged tower equals its base"; fail=1; }
for ck in straight/ckpt-*; do
  [ "$(ls "$ck" | tr '\n' ' ')" = "COMPLETE MANIFEST doc_adapter query_adapter state.bin " ] ||
    { echo "FAIL: $ck holds $(ls "$ck" | tr '\n' ' ') (adapters and state only expected)"; fail=1; }
done
grep -q "\"base_model_name_or_path\":.*$BASE" straight/final/query_adapter/adapter_config.json ||
  { echo "FAIL: adapter_config.json does not name the base"; cat straight/final/query_adapter/adapter_config.json; fail=1; }
printf '%s\n' '{"text": "apple river stone"}' '{"text": "x"}' > texts.jsonl
"$BUILD/sn_embed" --model straight/final/query_tower --input texts.jsonl --out q.npy 2> embed.log ||
  { echo "FAIL: sn_embed on the merged tower"; cat embed.log; fail=1; }

# One shared adapter.
"$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=shared --set stage1.lora.shared=true \
  --set stage1.steps=2 --set stage1.lora.targets=q,v 2> shared.log || { cat shared.log; exit 1; }
grep -q "one shared adapter" shared.log || { echo "FAIL: shared adapter not used"; fail=1; }
[ "$(ls shared/ckpt-1-2 | tr '\n' ' ')" = "COMPLETE MANIFEST query_adapter state.bin " ] ||
  { echo "FAIL: shared checkpoint holds $(ls shared/ckpt-1-2 | tr '\n' ' ')"; fail=1; }
cmp -s shared/final/query_tower/model.safetensors shared/final/doc_tower/model.safetensors ||
  { echo "FAIL: a shared adapter gave two different towers"; fail=1; }

# Dropout: masks from (seed, batch, rank, tower, chunk), so a resumed run is the straight run bit for
# bit, and the gradient cache's re-run (one chunk here) sees its first pass's masks: the same losses
# as the direct backward. It changes training (from step 2: B = 0 makes step 1 dropout-free).
DROP="--set stage1.steps=4 --set checkpoint.every=0"
"$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=nodrop $DROP 2> nodrop.log || { cat nodrop.log; exit 1; }
DROP="$DROP --set stage1.lora.dropout=0.2"
for run in drop drop-cache; do
  extra=""
  [ $run = drop-cache ] && extra="--set stage1.grad_cache_chunk=1000"
  # shellcheck disable=SC2086
  "$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=$run $DROP $extra 2> $run.log || { cat $run.log; exit 1; }
done
# shellcheck disable=SC2086
"$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=drop-resumed $DROP --stop-after 2 2> d1.log || { cat d1.log; exit 1; }
# shellcheck disable=SC2086
"$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=drop-resumed $DROP --resume auto 2> d2.log || { cat d2.log; exit 1; }
for f in query_tower/model.safetensors doc_adapter/adapter_model.safetensors; do
  cmp -s "drop/final/$f" "drop-resumed/final/$f" || { echo "FAIL: dropout: final/$f differs after a resume"; fail=1; }
done
grep -q '"lora_dropout":.*0.2' drop/final/query_adapter/adapter_config.json ||
  { echo "FAIL: adapter_config.json lacks lora_dropout 0.2"; fail=1; }
python3 - <<'PY' || fail=1
import json
def losses(d): return [json.loads(l)["loss"] for l in open(f"{d}/metrics.jsonl")]
drop, cache, nodrop = losses("drop"), losses("drop-cache"), losses("nodrop")
assert all(abs(a - b) <= 1e-6 * abs(a) for a, b in zip(drop, cache)), ("gradient cache differs under dropout", drop, cache)
assert drop[0] == nodrop[0] and drop[1:] != nodrop[1:], ("dropout should change steps 2+ only", drop, nodrop)
print("ok: dropout: resumed = straight, gradient cache = direct, training changed:", drop, nodrop)
PY

# Bad settings.
EXPECT_BIN="$BUILD/sn_train"
fail_before=$fail
set +e  # expect() runs commands that must fail
source "$SRC/tests/cpu/expect_exit2.sh"  # (sets fail=0)
expect "unknown target" "stage1.lora.targets" --config cfg.json --set stage1.lora.targets=q,attn
expect "dropout out of range" "stage1.lora.dropout" --config cfg.json --set stage1.lora.dropout=1.5
expect "shared_towers with lora" "stage1.lora.shared" --config cfg.json --set stage1.shared_towers=true
set -e
[ $fail_before = 0 ] || fail=1

# peft, where installed.
if python3 -c "import torch, transformers, peft" 2>/dev/null; then
  python3 - "$BASE" straight/final <<'PY' || fail=1
import sys, torch
from transformers import AutoModel
from peft import PeftModel
base_dir, final = sys.argv[1], sys.argv[2]
ids = torch.tensor([[5, 17, 300, 2, 41, 9, 1000]])
for tower, adapter in (("query_tower", "query_adapter"), ("doc_tower", "doc_adapter")):
    merged = AutoModel.from_pretrained(f"{final}/{tower}", torch_dtype=torch.float32).eval()
    base = AutoModel.from_pretrained(base_dir, torch_dtype=torch.float32).eval()
    lora = PeftModel.from_pretrained(base, f"{final}/{adapter}").eval()
    with torch.no_grad():
        a = merged(input_ids=ids).last_hidden_state
        b = lora(input_ids=ids).last_hidden_state
    err = float((a - b).norm() / a.norm())
    print(f"{adapter}: peft vs merged hidden rel err {err:.2e}")
    assert err < 1e-4, f"{adapter}: PeftModel embeds differently from the merged tower ({err})"
PY
else
  echo "note: torch/transformers/peft not installed: the PeftModel check is skipped"
fi
[ $fail = 0 ] && echo "test_train_lora: LoRA stage 1 trains, checkpoints adapters only, resumes exactly, exports"
exit $fail
