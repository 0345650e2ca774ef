#!/usr/bin/env python3
"""sn_eval --bm25 against a Python BM25 on a random toy BEIR corpus, to 1e-5.

The reference follows bm25.h's definition independently of the C code: Lucene's BM25 score
(idf = ln(1 + (N - df + 0.5) / (df + 0.5)), exact document lengths, a repeated query term counted
twice), BEIR's document text (title + " " + text), the analyzer's rules (words of letters and
digits, the separator ranges and lower-casing of bm25_analyzer.c, Lucene's 33 English stop words).
Stems come from tests/fixtures/porter/pairs.tsv (NLTK's original Porter algorithm), never from a
Python stemmer: every toy word is drawn from that file. Documents that match no query term must be
absent; exact ties (duplicated documents) must be ordered by document id descending. Each option
set is checked: the default analyzer, without stemming and stop words, case kept, other k1 and b.
Usage: test_bm25_reference.py BUILD_DIR
"""
import json
import math
import os
import random
import subprocess
import sys
import tempfile

TOL = 1e-5
SEED = 1234
NUM_DOCS = 120
NUM_QUERIES = 40
NUM_DUPLICATES = 5

build = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SN_BUILD_DIR", "build")
source = os.environ.get("SN_SOURCE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sn_eval = os.path.join(build, "sn_eval")
if not os.access(sn_eval, os.X_OK):
    print(f"FAIL: {sn_eval} is not built")
    sys.exit(1)

STOP_WORDS = set("a an and are as at be but by for if in into is it no not of on or such that the their then "
                 "there these they this to was will with".split())
SEPARATORS = [(0x80, 0xA9), (0xAB, 0xB4), (0xB6, 0xB9), (0xBB, 0xBF), (0xD7, 0xD7), (0xF7, 0xF7),
              (0x2000, 0x2BFF), (0x2E00, 0x2E7F), (0x3000, 0x303F), (0xD800, 0xF8FF), (0xFE00, 0xFE6F),
              (0xFEFF, 0xFEFF), (0xFF00, 0xFF0F), (0xFF1A, 0xFF20), (0xFF3B, 0xFF40), (0xFF5B, 0xFF65),
              (0xFFF0, 0xFFFF), (0x1F000, 0x1FAFF), (0xE0000, 0xE007F)]


def load_stems():
    stems = {}
    with open(os.path.join(source, "tests", "fixtures", "porter", "pairs.tsv")) as f:
        for line in f:
            word, stem = line.rstrip("\n").split("\t")
            stems[word] = stem
    return stems


STEMS = load_stems()


def is_word_char(c):
    o = ord(c)
    if o < 0x80:
        return c.isascii() and c.isalnum()
    return not any(lo <= o <= hi for lo, hi in SEPARATORS)


def lower(c):
    o = ord(c)
    if ord("A") <= o <= ord("Z") or (0xC0 <= o <= 0xDE and o != 0xD7) or (0x391 <= o <= 0x3A9 and o != 0x3A2) \
            or 0x410 <= o <= 0x42F:
        return chr(o + 0x20)
    if 0x400 <= o <= 0x40F:
        return chr(o + 0x50)
    if 0x100 <= o <= 0x17F and o not in (0x130, 0x131, 0x138, 0x149, 0x17F):
        if o == 0x178:
            return chr(0xFF)
        upper_is_odd = 0x139 <= o <= 0x148 or 0x179 <= o <= 0x17E
        return chr(o + 1) if (o % 2 == 1) == upper_is_odd else c
    return c


def analyze(text, lowercase, stopwords, stem):
    words, cur = [], []
    for c in text + " ":
        if is_word_char(c):
            cur.append(lower(c) if lowercase else c)
        elif cur:
            words.append("".join(cur))
            cur = []
    out = []
    for w in words:
        if stopwords and w in STOP_WORDS:
            continue
        if stem and all("a" <= c <= "z" or "0" <= c <= "9" for c in w) and not w.isdigit():
            assert w in STEMS, f"toy word {w!r} is not in the stem fixture"
            w = STEMS[w]
        out.append(w)
    return out


def reference(docs, queries, k1, b, lowercase, stopwords, stem):
    """{qid: {docid: score}} of every document matching a query term, in double precision."""
    terms = {d: analyze(t + " " + x, lowercase, stopwords, stem) for d, (t, x) in docs.items()}
    n = len(docs)
    avgdl = sum(len(v) for v in terms.values()) / n
    df = {}
    for v in terms.values():
        for t in set(v):
            df[t] = df.get(t, 0) + 1
    out = {}
    for qid, text in queries.items():
        scores = {}
        for t in analyze(text, lowercase, stopwords, stem):  # a repeated term counts again
            if t not in df:
                continue
            idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
            for d, v in terms.items():
                tf = v.count(t)
                if tf:
                    scores[d] = scores.get(d, 0.0) + idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(v) / avgdl))
        out[qid] = scores
    return out


def toy_data(rng):
    pool = sorted(w for w in STEMS if w.isalpha() and len(w) > 2)
    vocab = rng.sample(pool, 60)
    # words that share a stem, so stemming changes document frequencies
    vocab += [w for w in ("connect", "connected", "connecting", "connection", "connections") if w in STEMS]
    extra = ["The", "and", "of", "THE", "is", "1990", "42", "\u0392-catenin", "na\u00efve", "NA\u00cfVE",
             "\u6771\u4eac", "\u03b1\u00b1\u03b2"]
    seps = [" ", " ", " ", ", ", ". ", " - ", "\u2014", " (", ") ", "\u00a0", "; "]

    def sentence(lo, hi):
        n = rng.randint(lo, hi)
        words = []
        for _ in range(n):
            w = rng.choice(vocab) if rng.random() < 0.8 else rng.choice(extra)
            if rng.random() < 0.15:
                w = w.capitalize() if rng.random() < 0.5 else w.upper()
            words.append(w + rng.choice(seps))
        return "".join(words)

    docs = {}
    for i in range(NUM_DOCS):
        title = sentence(1, 5) if rng.random() < 0.7 else ""
        docs[f"doc{i:03d}"] = (title, sentence(0, 40))
    for i in range(NUM_DUPLICATES):  # exact duplicates: exact ties, ordered by id
        docs[f"dup{i}"] = docs[f"doc{i:03d}"]
    queries = {f"q{i}": sentence(1, 6) for i in range(NUM_QUERIES)}
    queries["q_unknown"] = "\u00fe\u00fe\u00fe \u00f0\u00e6\u00f0"  # matches nothing (never stemmed): absent from the run, counted 0
    queries["q_repeat"] = " ".join([vocab[0]] * 3 + [vocab[1]])
    return docs, queries


def write_beir(tmp, docs, queries, rng):
    with open(os.path.join(tmp, "corpus.jsonl"), "w") as f:
        for d, (t, x) in docs.items():
            f.write(json.dumps({"_id": d, "title": t, "text": x}) + "\n")
    with open(os.path.join(tmp, "queries.jsonl"), "w") as f:
        for q, x in queries.items():
            f.write(json.dumps({"_id": q, "text": x}) + "\n")
    os.makedirs(os.path.join(tmp, "qrels"), exist_ok=True)
    ids = sorted(docs)
    with open(os.path.join(tmp, "qrels", "test.tsv"), "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q in queries:
            f.write(f"{q}\t{rng.choice(ids)}\t1\n")


def read_run(path):
    run = {}
    with open(path) as f:
        for line in f:
            q, _, d, rank, score, _ = line.split()
            run.setdefault(q, []).append((int(rank), d, float(score)))
    return {q: [(d, s) for _, d, s in sorted(v)] for q, v in run.items()}


def check(name, got, want):
    failures = 0
    for q, scores in want.items():
        ranked = got.get(q, [])
        if {d for d, _ in ranked} != set(scores):
            print(f"FAIL {name}: {q}: documents {sorted(d for d, _ in ranked)} != {sorted(scores)}")
            failures += 1
            continue
        for i, (d, s) in enumerate(ranked):
            if abs(s - scores[d]) > TOL * max(1.0, abs(scores[d])):
                print(f"FAIL {name}: {q} {d}: score {s} != {scores[d]}")
                failures += 1
            if i == 0:
                continue
            prev_d = ranked[i - 1][0]
            if scores[prev_d] < scores[d] - TOL * abs(scores[d]):
                print(f"FAIL {name}: {q}: {prev_d} ({scores[prev_d]}) ranked above {d} ({scores[d]})")
                failures += 1
        # A duplicated document ties its original exactly (different documents whose sums only
        # happen to be equal may differ in the last bit of a float sum): ids descending, "dup" first.
        position = {d: i for i, (d, _) in enumerate(ranked)}
        for i in range(NUM_DUPLICATES):
            dup, orig = f"dup{i}", f"doc{i:03d}"
            if dup in position and (position[dup] > position[orig] or ranked[position[dup]][1] != ranked[position[orig]][1]):
                print(f"FAIL {name}: {q}: {dup} at rank {position[dup]}, its copy {orig} at {position[orig]}: "
                      "expected the same score, ids descending")
                failures += 1
    return failures


def main():
    rng = random.Random(SEED)
    docs, queries = toy_data(rng)
    variants = [
        ("default", [], 0.9, 0.4, True, True, True),
        ("plain", ["--no-stem", "--no-stopwords"], 0.9, 0.4, True, False, False),
        ("cased", ["--no-lowercase", "--no-stem"], 0.9, 0.4, False, True, False),
        ("k1 1.5 b 0.75", ["--bm25-k1", "1.5", "--bm25-b", "0.75"], 1.5, 0.75, True, True, True),
        ("k1 0 b 1", ["--bm25-k1", "0", "--bm25-b", "1", "--no-stopwords"], 0.0, 1.0, True, False, True),
        ("k1 2 b 0", ["--bm25-k1", "2", "--bm25-b", "0", "--no-stem"], 2.0, 0.0, True, True, False),
    ]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        write_beir(tmp, docs, queries, rng)
        for name, flags, k1, b, lowercase, stopwords, stem in variants:
            run_path, out_path = os.path.join(tmp, "run.trec"), os.path.join(tmp, "m.json")
            cmd = [sn_eval, "--bm25", "--data", tmp, "--k", "1000", "--run-out", run_path, "--out", out_path,
                   "--quiet"] + flags
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                print(f"FAIL {name}: exit {p.returncode}: {p.stderr}")
                failures += 1
                continue
            want = reference(docs, queries, k1, b, lowercase, stopwords, stem)
            got = read_run(run_path)
            bad = check(name, got, want)
            metrics = json.load(open(out_path))
            if metrics["num_docs"] != len(docs) or metrics["main_score"] != metrics["ndcg@10"]:
                print(f"FAIL {name}: metrics {metrics}")
                bad += 1
            if "q_unknown" in got or "missing from the run" not in p.stderr:
                print(f"FAIL {name}: a query without results should be missing from the run: {p.stderr}")
                bad += 1
            matched = sum(len(v) for v in want.values())
            print(f"{'ok' if not bad else 'FAIL'}: {name}: {len(want)} queries, {matched} scored documents")
            failures += bad
    print("test_bm25_reference.py:", "FAILED" if failures else "passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
