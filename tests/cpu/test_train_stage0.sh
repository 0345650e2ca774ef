#!/usr/bin/env bash
# Stage 0 (causal-LM pretraining) end to end on the CPU backend:
#   - a run from a fresh untied description writes RUN/final/lm (Qwen2ForCausalLM with
#     lm_head.weight), metrics with perplexity, and the held-out perplexity in RUN/eval/stage0.json;
#   - transformers loads RUN/final/lm with AutoModelForCausalLM (Qwen2, and a tied Llama run) and gets that perplexity on the same
#     windows within 1e-4 relative (where torch + transformers are installed);
#   - exact resume: 3 steps + --resume auto equals the straight run (final weights byte for byte,
#     metrics step for step);
#   - continued pretraining from that folder (stage0.model), stage 1 taking it as stage1.model and
#     stage 2 as stage2.student (a decoder student);
#   - bad stage-0 input exits 2 naming the key, file or line.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
python3 - <<'PY'
import json, random
random.seed(3)
words = ("the a dense retrieval model learns vectors for queries and documents from raw text while it "
         "reads many examples of language , . river stone bridge apple").split()
def doc(lo, hi): return " ".join(random.choice(words) for _ in range(random.randint(lo, hi)))
with open("text.jsonl", "w") as f:
    for _ in range(80): f.write(json.dumps({"text": doc(4, 50)}) + "\n")
    f.write("\n")  # a blank line is skipped
with open("more.txt", "w") as f: f.write(doc(100, 100))  # a plain-text file is one document
with open("heldout.txt", "w") as f: f.write(doc(400, 400))
PY
cat > cfg.json <<JSON
{"run_dir": "run", "seed": 7, "threads": 1,
 "stage0": {"model_desc": {"arch": "qwen2", "layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2,
                           "intermediate": 64, "vocab": 4096, "tie": false},
            "tokenizer": "$SRC/configs/default/decoder/tokenizer.json",
            "data": ["text.jsonl", "more.txt"], "eval_data": "heldout.txt", "seq_len": 24, "batch_seqs": 4,
            "steps": 8, "optim": {"lr": 3e-3, "warmup_steps": 2}},
 "checkpoint": {"every": 2, "keep": 2}}
JSON
EXPECT_BIN="$BUILD/sn_train"
source "$SRC/tests/cpu/expect_exit2.sh"  # expect(), and fail=0
"$BUILD/sn_train" --config cfg.json --stage 0 --set run_dir=straight 2> straight.log || { cat straight.log; exit 1; }
for f in final/lm/config.json final/lm/model.safetensors final/lm/tokenizer.json eval/stage0.json loss_stage0.svg; do
  [ -s "straight/$f" ] || { echo "FAIL: straight/$f missing"; fail=1; }
done
grep -q '"Qwen2ForCausalLM"' straight/final/lm/config.json || { echo "FAIL: not a Qwen2ForCausalLM folder"; fail=1; }
python3 - <<'PY' || fail=1
import json, struct
rows = [json.loads(l) for l in open("straight/metrics.jsonl")]
assert len(rows) == 8 and all(r["stage"] == 0 and abs(r["perplexity"] - 2.718281828 ** r["loss"]) < 1e-3 * r["perplexity"]
                              for r in rows), rows[:2]
assert rows[-1]["loss"] < rows[0]["loss"], "the loss did not go down"
raw = open("straight/final/lm/model.safetensors", "rb").read()
names = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
assert "lm_head.weight" in names and "model.embed_tokens.weight" in names, sorted(names)[:5]
print("ok: metrics with perplexity, Qwen2ForCausalLM names:", len(names), "tensors")
PY

# transformers: the same perplexity on the same windows (read from the eval token shard), for the
# Qwen2 run and a Llama one (tied head).
"$BUILD/sn_train" --config cfg.json --stage 0 --set run_dir=llama --set stage0.steps=2 \
  --set 'stage0.model_desc={"arch": "llama", "layers": 1, "hidden": 32, "heads": 2, "kv_heads": 1, "intermediate": 64, "vocab": 4096}' \
  2> llama.log || { cat llama.log; exit 1; }
if python3 -c "import torch, transformers, numpy" 2>/dev/null; then
  python3 - straight:Qwen2ForCausalLM llama:LlamaForCausalLM <<'PY' || fail=1
import glob, json, math, struct, sys, numpy as np, torch
from transformers import AutoModelForCausalLM
for arg in sys.argv[1:]:
    run, cls = arg.split(":")
    ours = json.load(open(f"{run}/eval/stage0.json"))
    path = glob.glob(f"{run}/cache/stage0-eval-*.snshard")[0]
    head = open(path, "rb").read(128)
    n_seqs, n_tokens, offsets_at, ids_at = struct.unpack_from("<4Q", head, 16)
    ids = np.fromfile(path, dtype="<i4", count=n_tokens, offset=ids_at)
    L = ours["seq_len"]
    windows = torch.tensor(ids[: (n_tokens // L) * L].reshape(-1, L).astype(np.int64))
    assert len(windows) == ours["windows"], (len(windows), ours["windows"])
    model = AutoModelForCausalLM.from_pretrained(f"{run}/final/lm", dtype=torch.float32).eval()
    assert type(model).__name__ == cls, type(model).__name__
    with torch.no_grad():
        loss = model(input_ids=windows, labels=windows).loss.item()  # every window has L - 1 targets
    ppl = math.exp(loss)
    rel = abs(ppl - ours["perplexity"]) / ppl
    print(f"{cls}: transformers perplexity {ppl:.6f}, ours {ours['perplexity']:.6f} (rel {rel:.2e})")
    assert rel <= 1e-4, "perplexity differs"
PY
else
  echo "note: torch/transformers not installed: the transformers perplexity check is skipped"
fi

# Exact resume: stopped after 3 steps, then resumed.
"$BUILD/sn_train" --config cfg.json --stage 0 --set run_dir=resumed --stop-after 3 2> r1.log || { cat r1.log; exit 1; }
[ ! -d resumed/final/lm ] || { echo "FAIL: finished although stopped"; fail=1; }
"$BUILD/sn_train" --config cfg.json --stage 0 --set run_dir=resumed --resume auto 2> r2.log || { cat r2.log; exit 1; }
grep -q "resume: stage 0, step 3" r2.log || { echo "FAIL: did not resume stage 0 at step 3"; cat r2.log; fail=1; }
cmp -s straight/final/lm/model.safetensors resumed/final/lm/model.safetensors ||
  { echo "FAIL: resumed final weights differ from the straight run's"; fail=1; }
source "$SRC/tests/cpu/tiny_run.sh"
diff <(training_metrics straight/metrics.jsonl) <(training_metrics resumed/metrics.jsonl) ||
  { echo "FAIL: resumed metrics differ"; fail=1; }
cmp -s straight/eval/stage0.json resumed/eval/stage0.json || { echo "FAIL: resumed perplexity differs"; fail=1; }

# Continued pretraining from the folder, then stage 1 from it.
"$BUILD/sn_train" --config cfg.json --stage 0 --set run_dir=continued --set stage0.model_desc= \
  --set stage0.model=straight/final/lm --set stage0.tokenizer= --set stage0.steps=2 2> cont.log ||
  { cat cont.log; echo "FAIL: continued pretraining"; fail=1; }
python3 "$SRC/tests/synth_data.py" data --examples 16 --test-queries 2 > /dev/null
cat > s1.json <<JSON
{"run_dir": "s1", "threads": 1, "data": {"train": ["data/train.jsonl"], "max_query_len": 12, "max_doc_len": 20},
 "stage1": {"model": "straight/final/lm", "batch_queries": 4, "steps": 2}}
JSON
"$BUILD/sn_train" --config s1.json --stage 1 2> s1.log || { cat s1.log; echo "FAIL: stage 1 from stage 0's folder"; fail=1; }
[ -s s1/final/query_tower/model.safetensors ] || { echo "FAIL: no stage-1 towers"; fail=1; }
# Stage 2 with stage 0's decoder as the student (last-token pooling, the folder's own tokenizer).
"$BUILD/sn_train" --config s1.json --stage 2 --set stage2.student=straight/final/lm --set stage2.pooling=last \
  --set stage2.batch_queries=4 --set stage2.steps=2 2> s2.log || { cat s2.log; echo "FAIL: stage 2 with stage 0's student"; fail=1; }
grep -q "stage 2 student: qwen2, 2 layers, hidden 32," s2.log || { echo "FAIL: not stage 0's decoder as the student"; fail=1; }
[ -s s1/final/student/model.safetensors ] || { echo "FAIL: no student"; fail=1; }

# Bad input: exit 2 naming what is wrong.
set +e
printf '%s\n' '{"text": "fine"}' '{"txt": "no text key"}' > bad.jsonl
printf 'ok \xff\xfe bytes' > bad.txt
expect "unknown stage0 key" "stage0.seqlen" --config cfg.json --stage 0 --set stage0.seqlen=8
expect "seq_len below 2" "stage0.seq_len" --config cfg.json --stage 0 --set stage0.seq_len=1
expect "missing data file" "stage0.data" --config cfg.json --stage 0 --set run_dir=b1 --set 'stage0.data=["nope.jsonl"]'
expect "model and model_desc" "stage0.model_desc" --config cfg.json --stage 0 --set stage0.model=straight/final/lm
expect "JSONL line without text" "bad.jsonl:2" --config cfg.json --stage 0 --set run_dir=b2 --set stage0.data=bad.jsonl
expect "invalid UTF-8" "bad.txt" --config cfg.json --stage 0 --set run_dir=b3 --set stage0.data=bad.txt
expect "too little text" "fewer than stage0.batch_seqs" --config cfg.json --stage 0 --set run_dir=b4 --set stage0.batch_seqs=4096
expect "seq_len beyond the positions" "max_position_embeddings" --config cfg.json --stage 0 --set run_dir=b5 \
  --set stage0.model_desc= --set stage0.model=straight/final/lm --set stage0.tokenizer= --set stage0.seq_len=100000
expect "stage-0 checkpoint resumed as stage 1" "stage 0" --config s1.json --set run_dir=resumed --stage 1 --resume auto
exit $fail
