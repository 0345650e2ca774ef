#!/usr/bin/env bash
# sn_eval --bm25 on SciFact (../shared/data/scifact; skipped when absent): nDCG@10 of the default
# analyzer and of the plain one (lower-cased words only, as a plain Lucene-style BM25 scores it)
# pinned to the values measured when BM25 was written (docs/PERFORMANCE.md), within PIN_TOL; and
# its run file, scored again by sn_eval --run, gives the same means.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
set +e  # each check records its failure and the test goes on
SHARED=${SN_SHARED_DIR:-$SRC/../shared}
DATA=$SHARED/data/scifact
[ -f "$DATA/corpus.jsonl" ] || { echo "SKIP: $DATA absent"; exit 77; }
PIN_TOL=0.001
fail=0
check() {
  local what=$1 want=$2; shift 2
  "$BUILD/sn_eval" --bm25 --data "$DATA" --out "$WORK/m.json" --quiet "$@" > "$WORK/log" 2>&1 ||
    { echo "FAIL: $what: $(tail -3 "$WORK/log")"; fail=1; return; }
  python3 - "$WORK/m.json" "$want" "$PIN_TOL" "$what" <<'PY' || fail=1
import json, sys
m = json.load(open(sys.argv[1]))
want, tol, what = float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
got = m["ndcg@10"]
ok = abs(got - want) <= tol and m["num_queries"] == 300 and m["num_docs"] == 5183 and m["main_score"] == got
print(f"{'ok' if ok else 'FAIL'}: {what}: nDCG@10 {got:.4f} (pinned {want} +- {tol}), recall@100 {m['recall@100']:.4f}")
sys.exit(0 if ok else 1)
PY
}
check "default analyzer (stop words, Porter)" 0.6768
check "plain (lower-case only)" 0.6618 --no-stem --no-stopwords
"$BUILD/sn_eval" --bm25 --data "$DATA" --quiet --out "$WORK/bm25.json" --run-out "$WORK/run.trec" > /dev/null 2>&1 &&
  "$BUILD/sn_eval" --run "$WORK/run.trec" --qrels "$DATA/qrels/test.tsv" --out "$WORK/rescored.json" > /dev/null 2>&1 ||
  { echo "FAIL: --run-out and scoring it again"; fail=1; }
python3 - "$WORK/bm25.json" "$WORK/rescored.json" <<'PY' || fail=1
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
keys = ["ndcg@10", "recall@10", "recall@100", "mrr@10"]
ok = all(abs(a[k] - b[k]) < 1e-9 for k in keys)
print(f"{'ok' if ok else 'FAIL'}: the run file scored again: " + ", ".join(f"{k} {a[k]:.4f}/{b[k]:.4f}" for k in keys))
sys.exit(0 if ok else 1)
PY
exit $fail
