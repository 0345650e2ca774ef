#!/usr/bin/env bash
# sn_make_dataset on a synthetic Translation-en (plain + gzip, a package repeated across lists,
# identical long descriptions, too-short ones, verbatim lines, paragraph breaks, an ambiguous short
# description), then on the real apt lists when they are present (> 10000 pairs expected).
# Usage: test_make_dataset.sh BUILD_DIR
set -euo pipefail
build="${1:-${SN_BUILD_DIR:-build}}"
bin="$build/sn_make_dataset"
[ -x "$bin" ] || { echo "FAIL: $bin is not built"; exit 1; }
command -v python3 >/dev/null || { echo "skip: python3 is needed to check the JSON"; exit 77; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lists"

# 40 ordinary packages, each with a distinct short and long description.
{
  for i in $(seq 1 40); do
    printf 'Package: pkg%02d\nDescription-md5: %032d\nDescription-en: tool number %d for task %d\n' "$i" "$i" "$i" "$((i * 7))"
    printf ' Pkg%02d performs a specific kind of processing on input data, identified\n' "$i"
    printf ' by the unique marker word marker%d and the number %d.\n .\n' "$i" "$((i * 13))"
    printf ' Verbatim example:\n   $ pkg%02d --run\n\n' "$i"
  done
  # identical long description under two names: kept once (first by name: dupa)
  for name in dupb dupa; do
    printf 'Package: %s\nDescription-md5: 0\nDescription-en: duplicate %s\n' "$name" "$name"
    printf ' This long description is shared word for word by two packages in the list.\n\n'
  done
  # ambiguous short description: never a test query
  for name in ambig1 ambig2; do
    printf 'Package: %s\nDescription-md5: 0\nDescription-en: Transitional  Package\n' "$name"
    printf ' This is a transitional package for %s; it can safely be removed after the upgrade.\n\n' "$name"
  done
  # long descriptions equal but for spacing, same short description: one pretraining document
  printf 'Package: twin1\nDescription-md5: 0\nDescription-en: spacing twin\n These two packages say the same thing, only the spacing differs.\n\n'
  printf 'Package: twin2\nDescription-md5: 0\nDescription-en: spacing  twin\n These two packages say  the same thing, only the spacing   differs.\n\n'
  # too short a long description
  printf 'Package: tiny\nDescription-md5: 0\nDescription-en: tiny thing\n short.\n'
} > "$tmp/lists/example.org_dists_x_main_i18n_Translation-en"
# the same package in a second (gzip) list with another text: the first list in name order wins
printf 'Package: pkg01\nDescription-md5: 1\nDescription-en: SECOND COPY\n This text must not appear because pkg01 was already read from the first list in name order.\n' \
  | gzip > "$tmp/lists/example.org_dists_y_main_i18n_Translation-en.gz"
printf 'ignored: not a translation\n' > "$tmp/lists/example.org_dists_x_main_binary-amd64_Packages"

"$bin" --apt-lists "$tmp/lists" --out "$tmp/out" --test-queries 10 --corpus-max 25 --seed 3 --min-doc-chars 40
"$bin" --apt-lists "$tmp/lists" --out "$tmp/out2" --test-queries 10 --corpus-max 25 --seed 3 --min-doc-chars 40
cmp "$tmp/out/train.jsonl" "$tmp/out2/train.jsonl"
cmp "$tmp/out/test/corpus.jsonl" "$tmp/out2/test/corpus.jsonl"
"$bin" --apt-lists "$tmp/lists" --out "$tmp/out3" --test-queries 10 --corpus-max 25 --seed 4 --min-doc-chars 40
if cmp -s "$tmp/out/test/queries.jsonl" "$tmp/out3/test/queries.jsonl"; then echo "FAIL: another seed gave the same test queries"; exit 1; fi

python3 - "$tmp/out" 10 25 <<'PY'
import json, sys
out, ntest, ncorpus = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
train = [json.loads(l) for l in open(f"{out}/train.jsonl")]
corpus = [json.loads(l) for l in open(f"{out}/test/corpus.jsonl")]
queries = [json.loads(l) for l in open(f"{out}/test/queries.jsonl")]
qrels = [l.rstrip("\n").split("\t") for l in open(f"{out}/test/qrels/test.tsv")]
stats = json.load(open(f"{out}/stats.json"))
assert qrels[0] == ["query-id", "corpus-id", "score"], qrels[0]
qrels = qrels[1:]
docs = {d["_id"]: d for d in corpus}
assert len(queries) == ntest and len(qrels) == ntest, (len(queries), len(qrels))
assert len(corpus) == ncorpus == len(docs), len(corpus)
assert all(d["title"] == "" for d in corpus)
for q, d, s in qrels:
    assert s == "1" and d in docs, (q, d)
assert all(set(t) == {"query", "pos"} and len(t["pos"]) == 1 for t in train)
pairs = len(train) + len(queries)
assert pairs == 40 + 1 + 2 + 2, pairs  # 40 ordinary + one of the duplicates + both ambiguous + twins
assert stats["pairs"] == pairs and stats["test_queries"] == ntest, stats
# test queries: unique short descriptions, excluded from training
test_texts = {docs[d]["text"] for _, d, _ in qrels}
assert not test_texts & {t["pos"][0] for t in train}, "a test positive is a training positive"
assert not {q["text"] for q in queries} & {t["query"] for t in train}
assert all("ransitional" not in q["text"] for q in queries)
alltext = [t["pos"][0] for t in train] + [d["text"] for d in corpus]
assert not any("SECOND COPY" in t or "must not appear" in t for t in alltext)
assert not any(t["query"] == "tiny thing" for t in train)
assert sum("shared word for word" in t for t in set(alltext)) == 1
assert not any("duplicate dupb" == t["query"] for t in train) and "dupb" not in docs
# format: paragraphs joined by newlines, verbatim lines kept on their own line
sample = next(t for t in alltext if "marker1 " in t)
assert "\n" in sample and "\n  $ pkg01 --run" in sample, repr(sample)
# pretraining text: the training packages' descriptions, no test query or positive, deduplicated
pre = [json.loads(l)["text"] for l in open(f"{out}/pretrain.jsonl")]
assert len(pre) == len(train) - 1 == stats["pretrain_documents"], (len(pre), len(train), stats)
assert stats["pretrain_dropped_duplicates"] == 1 and stats["pretrain_excluded_test"] == ntest, stats
assert stats["pretrain_chars"] == sum(len(t.encode()) for t in pre), stats
assert sum("only the spacing" in t for t in pre) == 1
for t in pre:
    assert not any(x in t for x in test_texts), "a test positive is in the pretraining text"
    assert not any(q["text"] in t for q in queries), "a test query is in the pretraining text"
norm = [" ".join(t.split()) for t in pre]
assert len(set(norm)) == len(norm), "duplicates in the pretraining text"
assert {t["query"] + "\n" + t["pos"][0] for t in train} >= set(pre)
print("synthetic dataset ok:", len(train), "train pairs,", len(queries), "queries,", len(corpus), "docs")
PY

# bad input: no Translation files, a malformed line
set +e
msg="$("$bin" --apt-lists "$tmp/out" --out "$tmp/x" 2>&1)"; rc=$?
set -e
[ "$rc" = 2 ] || { echo "FAIL: no lists: exit $rc"; exit 1; }
grep -q "apt-get update -o Acquire::Languages=en" <<<"$msg" || { echo "FAIL: no fetch hint in: $msg"; exit 1; }
mkdir -p "$tmp/bad"
printf 'Package: a\nDescription-en: x\n fine line\nthis line has no colon\n' > "$tmp/bad/b_i18n_Translation-en"
set +e
msg="$("$bin" --apt-lists "$tmp/bad" --out "$tmp/x" 2>&1)"; rc=$?
set -e
[ "$rc" = 2 ] || { echo "FAIL: malformed list: exit $rc"; exit 1; }
grep -q "b_i18n_Translation-en:4:" <<<"$msg" || { echo "FAIL: no FILE:LINE in: $msg"; exit 1; }

# the real lists, when apt-get update -o Acquire::Languages=en has fetched them
if ls /var/lib/apt/lists/*_i18n_Translation-en* >/dev/null 2>&1; then
  "$bin" --out "$tmp/real"
  python3 - "$tmp/real" <<'PY'
import json, sys
out = sys.argv[1]
stats = json.load(open(f"{out}/stats.json"))
ntrain = sum(1 for _ in open(f"{out}/train.jsonl"))
assert stats["pairs"] > 10000 and ntrain == stats["train_pairs"], stats
qrels = [l.split("\t")[1] for l in list(open(f"{out}/test/qrels/test.tsv"))[1:]]
ids = {json.loads(l)["_id"] for l in open(f"{out}/test/corpus.jsonl")}
assert all(d in ids for d in qrels)
print("real dataset ok:", stats["pairs"], "pairs,", stats["test_queries"], "test queries,", stats["test_corpus"], "docs")
PY
else
  echo "real apt lists: no Translation-en files here (apt-get update -o Acquire::Languages=en fetches them); skipped that part"
fi
echo "test_make_dataset: ok"
