#!/usr/bin/env bash
# The final towers as exports: export.dtype (source = the backend's storage, f32 on the CPU; or
# bf16), no untied lm_head.weight (checkpoints keep it for resuming), and a model card README.md
# in each tower folder with the run's settings, its evaluation and usage snippets.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
set +e  # each check records its failure and the test goes on
source "$SRC/tests/cpu/tiny_run.sh"
tiny_run_setup 3 2
fail=0
bad() { echo "FAIL: $*"; fail=1; }
# Untied decoder (an lm_head.weight that the towers never read), evaluated on the synthetic test set.
UNTIED='stage1.model_desc={"arch": "qwen2", "layers": 1, "hidden": 16, "heads": 2, "kv_heads": 1, "intermediate": 32, "vocab": 4096, "tie": false}'
# tensor_dtypes FILE: "name dtype" per tensor, from the safetensors header.
tensor_dtypes() {
  python3 -c 'import json,struct,sys
f=open(sys.argv[1],"rb"); n=struct.unpack("<Q",f.read(8))[0]; h=json.loads(f.read(n))
for k,v in sorted(h.items()):
    if k!="__metadata__": print(k, v["dtype"])' "$1"
}
for dtype in source bf16; do
  run=run_$dtype
  "$BUILD/sn_train" --config cfg.json --set run_dir=$run --set "$UNTIED" --set eval.data=data/test \
    --set export.dtype=$dtype > $run.log 2>&1 || { bad "export.dtype=$dtype: sn_train exited $?"; tail -5 $run.log; continue; }
  want=F32; [ $dtype = bf16 ] && want=BF16
  for tower in query_tower doc_tower student; do
    st=$run/final/$tower/model.safetensors
    tensor_dtypes $st > dtypes.txt || { bad "$st unreadable"; continue; }
    grep -q '^lm_head.weight ' dtypes.txt && bad "$dtype: $tower exports lm_head.weight"
    grep -v " $want\$" dtypes.txt > other_dtypes.txt
    [ -s other_dtypes.txt ] && bad "$dtype: $tower has tensors not in $want: $(head -2 other_dtypes.txt)"
    card=$run/final/$tower/README.md
    [ -s $card ] || { bad "$dtype: no $card"; continue; }
    for needle in "SentenceTransformer(\"path/to/$tower\")" "sn_embed --model path/to/$tower" "data/train.jsonl" \
                  "Steps: " "| nDCG@10 |" "library_name: sentence-transformers"; do
      grep -qF -- "$needle" $card || bad "$dtype: $card lacks '$needle'"
    done
  done
  # The stage-1 checkpoint keeps the head: resuming needs every trained tensor.
  ckpt=$(ls -d $run/ckpt-1-* 2>/dev/null | tail -1)
  [ -n "$ckpt" ] || bad "$run: no stage-1 checkpoint"
  # (listed to a file first: grep -q closing the pipe early would fail the lister under pipefail)
  [ -n "$ckpt" ] && { tensor_dtypes $ckpt/query_tower/model.safetensors > ckpt_tensors.txt
                      grep -q '^lm_head.weight ' ckpt_tensors.txt || bad "$ckpt/query_tower lost lm_head.weight"; }
done
card=run_source/final
grep -qF 'temperature 0.05' $card/query_tower/README.md || bad "query card lacks the InfoNCE temperature"
grep -qF 'prompt_name="document"' $card/doc_tower/README.md || bad "doc card lacks prompt_name=\"document\""
grep -qF 'alpha 1, beta 1' $card/student/README.md || bad "student card lacks alpha and beta"
grep -qF 'Stage 2 of ScalingNote' $card/student/README.md || bad "student card lacks its stage"
grep -qF "\$'{title} {text}'" $card/doc_tower/README.md || bad "doc card lacks the doc prompt as trained"
# The card's metrics are the run's.
python3 - "$card/query_tower/README.md" run_source/eval/stage1.json <<'PY' || fail=1
import json, re, sys
card, ev = open(sys.argv[1]).read(), json.load(open(sys.argv[2]))
row = re.search(r"\| nDCG@10 \| Recall@10 \| Recall@100 \| MRR@10 \|\n\|---\|---\|---\|---\|\n\|(.*)\|", card)
got = [float(x) for x in row.group(1).split("|")] if row else []
want = [round(ev[k], 4) for k in ("ndcg@10", "recall@10", "recall@100", "mrr@10")]
if got != want:
    print(f"FAIL: card metrics {got} != eval/stage1.json {want}"); sys.exit(1)
PY
# The bf16 export without lm_head loads and embeds.
echo '{"text": "hello world"}' > q.jsonl
"$BUILD/sn_embed" --model run_bf16/final/query_tower --input q.jsonl --out q.npy > embed.log 2>&1 ||
  { bad "sn_embed of the bf16 export: $(tail -2 embed.log)"; }
grep -q "ignoring" embed.log && bad "sn_embed warns on the export: $(grep ignoring embed.log)"
[ $fail = 0 ] && echo "ok: exports in f32 and bf16 without lm_head, with model cards"
exit $fail
