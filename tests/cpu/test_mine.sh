#!/usr/bin/env bash
# sn_mine with BM25 and with dense towers: a mined negative is never one of the line's positives
# (by id, by exact text, by a duplicate record); the negatives are N per line from ranks [A, B) (the
# full band read in two ways agrees), in rank order; a seed gives the same file whatever the thread
# count and another seed another file; margins filter; the other fields of a line are kept and the
# output trains (stage1.kd_weight reads its pos_scores/neg_scores). Bad input exits 2, naming it.
# Only the BM25 contract (a ranking, -1 padding) is relied on, never one analyzer's scores.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
set +e  # each check records its failure and the test goes on
export OMP_NUM_THREADS=1
source "$SRC/tests/mine_setup.sh"
MINE=$BUILD/sn_mine
EXPECT_BIN=$MINE
source "$SRC/tests/cpu/expect_exit2.sh"  # expect(), fail=0
FAIL() { echo "FAIL: $*"; fail=1; }
# One line names a corpus id as a further positive.
python3 - <<'PY'
import json
lines = [json.loads(l) for l in open("data/train.jsonl")]
lines[2]["pos_ids"] = ["c7"]
with open("train.jsonl", "w") as f:
    for ex in lines: f.write(json.dumps(ex) + "\n")
PY

# check OUT N [margin KIND X]: the invariants of one mined file
check() {
  python3 - "$@" <<'PY' || FAIL "check $*"
import json, sys
out, n = sys.argv[1], int(sys.argv[2])
kind, x = (sys.argv[3], float(sys.argv[4])) if len(sys.argv) > 3 else (None, 0.0)
corpus = {r["_id"]: r for r in map(json.loads, open("corpus.jsonl"))}
def forms(d):  # the exact texts a document (line doc or record) can be equal to
    t, x = (d.get("title", ""), d["text"]) if isinstance(d, dict) else ("", d)
    return {x, f"{t} {x}"} if t else {x}
src = [json.loads(l) for l in open("train.jsonl")]
got = [json.loads(l) for l in open(out)]
assert len(got) == len(src), (len(got), len(src))
short = 0
for i, (a, b) in enumerate(zip(src, got)):
    assert a["query"] == b["query"] and a["pos"] == b["pos"] and a.get("pos_ids") == b.get("pos_ids"), i
    assert len(b["neg"]) == len(b["neg_ids"]) == len(b["neg_scores"]) <= n, i
    assert len(b["pos_scores"]) == len(b["pos"]), i
    short += len(b["neg"]) < n
    pos_text = set().union(*(forms(p) for p in a["pos"]))
    for d, did in zip(b["neg"], b["neg_ids"]):
        assert did not in a.get("pos_ids", []), (i, did, "a pos_ids record")
        assert not (forms(corpus[did]) & pos_text), (i, did, "equal to a positive")
        assert not (forms(d) & pos_text), (i, did, "text of a positive")
        assert forms(d) == forms(corpus[did]), (i, did, "neg and neg_ids disagree")
    s = b["neg_scores"]
    assert all(s[j] >= s[j + 1] for j in range(len(s) - 1)), (i, s, "not in rank order")
    best = max(b["pos_scores"])
    if kind == "abs": assert all(v <= best - x + 1e-6 for v in s), (i, s, best)
    if kind == "rel": assert all(v <= best * (1 - x) + 1e-6 for v in s), (i, s, best)
if kind is None: assert short == 0, f"{short} lines with fewer than {n} negatives"
print(f"ok: {out}: {len(got)} lines, {short} short")
PY
}
# band OUT_AB OUT_0B A: the band [A, B) taken whole equals ranks A.. of the list [0, B) taken whole
band() {
  python3 - "$@" <<'PY' || FAIL "band $*"
import json, sys
ab = [json.loads(l)["neg_ids"] for l in open(sys.argv[1])]
ob = [json.loads(l)["neg_ids"] for l in open(sys.argv[2])]
a = int(sys.argv[3])
assert all(x == y[a:] for x, y in zip(ab, ob)), "the band is not the list's ranks A.."
print(f"ok: {sys.argv[1]} is ranks {a}.. of {sys.argv[2]}")
PY
}

for mode in bm25 dense; do
  if [ $mode = bm25 ]; then S="--bm25"; else S=$DENSE; fi
  run() { "$MINE" $S --data train.jsonl --corpus corpus.jsonl "$@" 2>> mine.log || FAIL "$mode $*: exit $?: $(tail -2 mine.log)"; }
  run --out $mode.a.jsonl --range 2:12 --negatives 3 --seed 5
  check $mode.a.jsonl 3
  grep -q '"dup"' $mode.a.jsonl && head -1 $mode.a.jsonl | grep -q '"dup"' && FAIL "$mode: line 1 got its positive's duplicate"
  run --out $mode.b.jsonl --range 2:12 --negatives 3 --seed 5 --threads 2
  cmp -s $mode.a.jsonl $mode.b.jsonl || FAIL "$mode: the same seed on 2 threads gave another file"
  run --out $mode.c.jsonl --range 2:12 --negatives 3 --seed 6
  cmp -s $mode.a.jsonl $mode.c.jsonl && FAIL "$mode: seeds 5 and 6 gave the same file"
  check $mode.c.jsonl 3
  run --out $mode.band.jsonl --range 3:9 --negatives 6
  run --out $mode.top.jsonl --range 0:9 --negatives 9
  check $mode.band.jsonl 6
  band $mode.band.jsonl $mode.top.jsonl 3
  # margins: half the gap between the best positive and its best candidate filters some lines
  margin=$(python3 -c "
import json, statistics
g = [max(e['pos_scores']) - e['neg_scores'][0] for e in map(json.loads, open('$mode.top.jsonl'))]
print(statistics.median(g))")
  run --out $mode.m.jsonl --range 0:9 --negatives 9 --margin "$margin"
  check $mode.m.jsonl 9 abs "$margin"
  cmp -s $mode.m.jsonl $mode.top.jsonl && FAIL "$mode: --margin $margin filtered nothing"
  run --out $mode.r.jsonl --range 0:9 --negatives 9 --relative-margin 0.001
  check $mode.r.jsonl 9 rel 0.001
done

# The output is training data: stage 1 distils its scores.
"$BUILD/sn_train" --set run_dir=kd --set 'data.train=["dense.a.jsonl"]' \
  --set 'stage1.model_desc={"arch": "qwen2", "layers": 1, "hidden": 16, "heads": 2, "kv_heads": 1, "vocab": 4096}' \
  --set "stage1.tokenizer=$SRC/configs/default/decoder/tokenizer.json" --set stage1.batch_queries=4 \
  --set stage1.negatives_per_query=2 --set stage1.kd_weight=0.5 --set stage1.steps=1 --stage 1 2> kd.log \
  && grep -q '"kd"' kd/metrics.jsonl || FAIL "training on the mined file: $(tail -2 kd.log)"

# ---- bad input ----------------------------------------------------------------------------------
: > empty.jsonl
python3 -c "
import json
l = json.loads(open('train.jsonl').readline()); l['pos_ids'] = ['no-such-id']
open('unknown.jsonl', 'w').write(json.dumps(l) + '\n')"
IO="--data train.jsonl --out x.jsonl --range 0:10"
ND=$(wc -l < corpus.jsonl)
expect "empty corpus" "empty.jsonl: no records" --bm25 $IO --corpus empty.jsonl
expect "unknown pos_ids" "'no-such-id', which is not an _id of the corpus" --bm25 --data unknown.jsonl --out x.jsonl --range 0:10 --corpus corpus.jsonl
expect "range past the corpus" "ends past the corpus" --bm25 --data train.jsonl --out x.jsonl --corpus corpus.jsonl --range 0:$((ND + 1))
expect "N above the band" "--negatives 5: expected 1 to 4" --bm25 --data train.jsonl --out x.jsonl --corpus corpus.jsonl --range 2:6 --negatives 5
expect "both scorers" "choose one scorer" --bm25 $DENSE $IO --corpus corpus.jsonl
expect "no scorer" "expected --bm25, or --query-model" $IO --corpus corpus.jsonl
expect "both margins" "give one margin" --bm25 $IO --corpus corpus.jsonl --margin 0.1 --relative-margin 0.1
expect "relative margin 1" "--relative-margin" --bm25 $IO --corpus corpus.jsonl --relative-margin 1
expect "bad range" "expected A:B" --bm25 $IO --corpus corpus.jsonl --range 10
expect "empty range" "expected A:B with 0 <= A < B" --bm25 $IO --corpus corpus.jsonl --range 5:5
expect "bad training line" "corpus.jsonl:1: missing \"query\"" --bm25 --data corpus.jsonl --out x.jsonl --range 0:10 --corpus corpus.jsonl
expect "missing --corpus" "--corpus is required" --bm25 $IO
[ -e x.jsonl ] && FAIL "a refused run wrote its output"
exit $fail
