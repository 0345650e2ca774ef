#!/usr/bin/env bash
# The scaling study's machinery (benchmarks/scaling/sweep.py) at tiny sizes on the CPU:
# - the fit recovers L = 3 N^-0.3 + 1 (alpha within 1e-3);
# - a sweep of 4 sizes (non-embedding parameters spanning > 30x) x {random, pretrained} on a
#   dataset from sn_make_dataset (stage 0 on its pretrain.jsonl) writes the table, the JSON and
#   the SVG with every cell;
# - the held-out contrastive loss of a cell equals numpy's InfoNCE over sn_embed's query and
#   sn_eval's corpus embeddings;
# - a sweep stopped after 3 cells (--max-cells), then at a deadline inside a phase (--deadline-s:
#   sn_train checkpoints), and rerun, does not rerun finished cells and ends with the same numbers
#   as the uninterrupted one;
# - bad sweep configs exit 2 naming the field.
# Usage: test_scaling_sweep.sh BUILD_DIR
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
SWEEP="$SRC/benchmarks/scaling/sweep.py"
sn_test_needs_python numpy
fail=0

PYTHONPATH="$SRC/benchmarks/scaling" python3 - <<'PY' || fail=1
import numpy as np
import scaling_fit
n = np.logspace(3, 8, 9)
f = scaling_fit.fit_loss_law(n, 3 * n ** -0.3 + 1)
assert abs(f["alpha"] - 0.3) < 1e-3 and abs(f["A"] - 3) < 1e-2 and abs(f["L_inf"] - 1) < 1e-3 and f["r2"] > 0.999999, f
g = scaling_fit.fit_log_linear(n, 0.1 + 0.05 * np.log10(n))
assert abs(g["slope_per_decade"] - 0.05) < 1e-9 and abs(g["intercept"] - 0.1) < 1e-9, g
print("ok: fit recovers alpha", f["alpha"])
PY

# a small real-looking package list -> train.jsonl, test/, pretrain.jsonl
mkdir lists
python3 - <<'PY'
import random
random.seed(5)
words = ("data file network server image audio video text parser library tool daemon client kernel module "
         "driver font theme editor shell compiler debugger archive backup monitor database query cache index "
         "search mail web proxy firewall printer scanner camera game puzzle chess music player codec").split()
with open("lists/example_i18n_Translation-en", "w") as f:
    for i in range(160):
        a, b, c = random.sample(words, 3)
        body = " ".join(random.choice(words) for _ in range(30))
        f.write(f"Package: p{i:03d}\nDescription-md5: 0\nDescription-en: {a} {b} utility number {i}\n"
                f" The {a} {b} {c} program {i} handles {body}.\n\n")
PY
"$BUILD/sn_make_dataset" --apt-lists lists --out data --test-queries 40 --corpus-max 80 2> make_dataset.log \
  || { cat make_dataset.log; exit 1; }

cat > base.json <<JSON
{"run_dir": "unused", "seed": 11, "threads": 1,
 "data": {"train": ["data/train.jsonl"], "query_prompt": "{text}", "doc_prompt": "{text}",
          "max_query_len": 16, "max_doc_len": 32},
 "stage1": {"model_desc": {"arch": "qwen2", "layers": 1, "hidden": 16, "heads": 2, "kv_heads": 1,
                           "intermediate": 32, "vocab": 4096, "max_positions": 128, "rope_theta": 10000, "tie": true},
            "tokenizer": "$SRC/configs/default/decoder/tokenizer.json", "batch_queries": 8,
            "negatives_per_query": 0, "optim": {"lr": 2e-3, "warmup_steps": 1}},
 "eval": {"data": "data/test", "batch": 32}}
JSON
write_sweep() {  # OUT_DIR
  cat > "sweep-$1.json" <<JSON
{"base_config": "base.json", "out_dir": "$1", "stage1_steps": 6,
 "sizes": [{"name": "h16", "layers": 1, "hidden": 16, "heads": 2, "kv_heads": 1, "intermediate": 32},
           {"name": "h32", "layers": 1, "hidden": 32, "heads": 2, "kv_heads": 1, "intermediate": 64},
           {"name": "h48", "layers": 2, "hidden": 48, "heads": 4, "kv_heads": 2, "intermediate": 96},
           {"name": "h96", "layers": 3, "hidden": 96, "heads": 4, "kv_heads": 2, "intermediate": 192,
            "set": {"stage1.optim.lr": 1e-3, "stage0.optim.lr": 2e-3}}],
 "inits": ["random", "pretrained"],
 "stage0": {"data": "data/pretrain.jsonl", "steps": 4, "seq_len": 32, "batch_seqs": 4,
            "optim": {"lr": 3e-3, "warmup_steps": 1}}}
JSON
}

write_sweep straight
python3 "$SWEEP" --config sweep-straight.json --bin "$BUILD" 2> straight.log || { cat straight.log; exit 1; }
python3 - <<'PY' || fail=1
import json, xml.etree.ElementTree as ET
r = json.load(open("straight/results.json"))
cells = r["cells"]
assert len(cells) == 8 and {(c["size"], c["init"]) for c in cells} == {
    (s, i) for s in ("h16", "h32", "h48", "h96") for i in ("random", "pretrained")}, cells
n = sorted({c["params_non_embedding"] for c in cells})
assert len(n) == 4 and n[-1] >= 30 * n[0], n
for c in cells:
    assert 0 < c["contrastive_loss"] < 20 and 0 <= c["ndcg@10"] <= 1 and 0 <= c["recall@100"] <= 1, c
    assert (c["seconds_stage0"] > 0) == (c["init"] == "pretrained"), c
for init in ("random", "pretrained"):
    f = r["fits"][init]
    assert "loss" in f and 0 <= f["loss"]["L_inf"] and "ndcg@10" in f, f
md = open("straight/results.md").read()
assert md.count("| random |") == 4 and md.count("| pretrained |") == 4 and "α =" in md and "R² =" in md, md
svg = ET.parse("straight/loss_vs_size.svg").getroot()
circles = [e for e in svg.iter() if e.tag.endswith("circle")]
assert len(circles) == 2 * (8 + 2), len(circles)  # 8 cells + 2 legend marks, two panels
print("ok: 8 cells, N from", n[0], "to", n[-1])
PY
# a size's own keys reach its cells' configs, and only theirs
python3 - <<'PY' || fail=1
import json
def lr(cell, stage):  # as sn_train resolved it (a float32, printed)
    return json.load(open(f"straight/cells/{cell}/{stage}/config.resolved.json"))[stage]["optim"]["lr"]
near = lambda a, b: abs(a - b) < 1e-6 * b
assert near(lr("h96-random", "stage1"), 1e-3) and near(lr("h96-pretrained", "stage0"), 2e-3), "h96's set not applied"
assert near(lr("h48-random", "stage1"), 2e-3) and near(lr("h48-pretrained", "stage0"), 3e-3), "h96's set leaked"
print("ok: per-size set")
PY
# the pretrained towers started from stage 0's causal LM
grep -q '"Qwen2ForCausalLM"' straight/cells/h32-pretrained/stage0/final/lm/config.json \
  || { echo "FAIL: no stage-0 LM for a pretrained cell"; fail=1; }

# the held-out contrastive loss against numpy's
cell=straight/cells/h48-pretrained/stage1
cp straight/cells/h48-pretrained/eval.json sweep_eval.json
python3 -c "
import json
with open('queries.jsonl', 'w') as f:
    for l in open('data/test/queries.jsonl'): f.write(json.dumps({'text': json.loads(l)['text']}) + '\n')"
"$BUILD/sn_embed" --model $cell/final/query_tower --input queries.jsonl --out queries.npy 2> embed.log \
  || { cat embed.log; exit 1; }
"$BUILD/sn_eval" --query-model $cell/final/query_tower --doc-model $cell/final/doc_tower --data data/test \
  --contrastive-loss 0.05 --save-doc-emb docs --quiet --out eval.json > eval.txt 2> eval.log || { cat eval.log; exit 1; }
grep -q "contrastive loss" eval.txt || { echo "FAIL: sn_eval printed no contrastive loss"; fail=1; }
python3 - <<'PY' || fail=1
import json
import numpy as np
q, d = np.load("queries.npy").astype(np.float64), np.load("docs.npy").astype(np.float64)
doc_row = {l.strip(): i for i, l in enumerate(open("docs.ids.txt"))}
qids = [json.loads(l)["_id"] for l in open("data/test/queries.jsonl")]
rel = {}
for line in list(open("data/test/qrels/test.tsv"))[1:]:
    qid, did, _ = line.rstrip("\n").split("\t")
    rel.setdefault(qid, []).append(did)
terms = []
for i, qid in enumerate(qids):
    logits = d @ q[i] / 0.05
    lse = logits.max() + np.log(np.exp(logits - logits.max()).sum())
    terms += [lse - logits[doc_row[did]] for did in rel[qid]]
want = float(np.mean(terms))
ours = json.load(open("eval.json"))
trained = json.load(open("sweep_eval.json"))  # the sweep's own evaluation of the cell
assert ours["contrastive_pairs"] == len(terms) and abs(ours["contrastive_loss"] - want) < 1e-5 * want, (ours, want)
assert abs(trained["contrastive_loss"] - want) < 1e-5 * want, (trained, want)
print("ok: held-out contrastive loss", want)
PY

# stopped after 3 cells, rerun: the finished cells are not rerun, the result is the same
write_sweep parts
python3 "$SWEEP" --config sweep-parts.json --bin "$BUILD" --max-cells 3 2> parts1.log || { cat parts1.log; exit 1; }
n_done=$(python3 -c "import json; print(sum('result' in c for c in json.load(open('parts/sweep_state.json'))['cells'].values()))")
[ "$n_done" = 3 ] || { echo "FAIL: --max-cells 3 finished $n_done cells"; fail=1; }
[ "$(grep -c '^| h' parts/results.md)" = 3 ] || { echo "FAIL: the partial table is not 3 rows"; fail=1; }
for c in h16-random h16-pretrained h32-random; do cp "parts/cells/$c/sn_train.log" "$c.before"; done
# then stopped inside a phase (exit 3): h32-pretrained's stage 0 after 2 of its 4 steps, and at a
# deadline (wherever it falls); sn_train checkpoints, the rerun resumes
for how in "--stop-after-steps 2" "--deadline-s 2"; do
  set +e
  python3 "$SWEEP" --config sweep-parts.json --bin "$BUILD" $how 2>> parts2.log
  rc=$?
  set -e
  [ "$rc" = 3 ] || [ "$how" = "--deadline-s 2" ] || { echo "FAIL: $how: exit $rc, expected 3"; cat parts2.log; fail=1; }
done
grep -q "rerun to continue" parts2.log || { echo "FAIL: no 'rerun to continue' in: $(cat parts2.log)"; fail=1; }
grep -q "stage0.json --stage 0 --resume auto" parts/cells/h32-pretrained/sn_train.log \
  || { echo "FAIL: the stopped stage 0 was not resumed"; cat parts/cells/h32-pretrained/sn_train.log; fail=1; }
python3 "$SWEEP" --config sweep-parts.json --bin "$BUILD" 2>> parts2.log || { cat parts2.log; exit 1; }
for c in h16-random h16-pretrained h32-random; do
  cmp -s "$c.before" "parts/cells/$c/sn_train.log" || { echo "FAIL: finished cell $c was run again"; fail=1; }
  grep -q "cell $c" parts2.log && { echo "FAIL: the rerun started finished cell $c"; fail=1; }
done
python3 - <<'PY' || fail=1
import json
def numbers(path):
    return [{k: v for k, v in c.items() if not k.startswith("seconds")} for c in json.load(open(path))["cells"]]
a, b = numbers("straight/results.json"), numbers("parts/results.json")
assert a == b, (a, b)
print("ok: the resumed sweep equals the uninterrupted one")
PY

# bad configs: exit 2 naming the field
expect_bad() {  # FIELD JSON
  echo "$2" > bad.json
  set +e
  msg=$(python3 "$SWEEP" --config bad.json --bin "$BUILD" 2>&1)
  rc=$?
  set -e
  if [ "$rc" != 2 ] || ! grep -qF "$1" <<<"$msg"; then
    echo "FAIL: bad config ($1): exit $rc: $msg"
    fail=1
  fi
}
expect_bad "'stage1_steps'" '{"base_config": "base.json", "out_dir": "x", "sizes": [{"name": "a", "layers": 1}]}'
expect_bad "'sizes[1]'.hidden" '{"base_config": "base.json", "out_dir": "x", "stage1_steps": 2,
  "sizes": [{"name": "a", "hidden": 16}, {"name": "b", "hidden": "big"}], "inits": ["random"]}'
expect_bad "'sizes[0]'.set" '{"base_config": "base.json", "out_dir": "x", "stage1_steps": 2,
  "sizes": [{"name": "a", "set": ["stage1.optim.lr", 1]}], "inits": ["random"]}'
expect_bad "'inits'" '{"base_config": "base.json", "out_dir": "x", "stage1_steps": 2,
  "sizes": [{"name": "a"}], "inits": ["random", "warm"]}'
expect_bad "'stage0.data'" '{"base_config": "base.json", "out_dir": "x", "stage1_steps": 2,
  "sizes": [{"name": "a"}], "inits": ["pretrained"]}'
expect_bad "'base_config'" '{"base_config": "nowhere.json", "out_dir": "x", "stage1_steps": 2, "sizes": [{"name": "a"}]}'
expect_bad "bad.json:2: not JSON" '{"base_config": '

[ "$fail" = 0 ] && echo "test_scaling_sweep: ok"
exit "$fail"
