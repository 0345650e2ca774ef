#!/usr/bin/env python3
"""Stage-1 training file from SciFact's train split, for benchmarks/real_lengths_gpu.sh.

One FlagEmbedding line per (query, positive) pair of qrels/train.tsv:
  {"query": str, "pos": [{"title", "text"}], "neg": [{"title", "text"}]}
The one negative is a corpus document drawn with a fixed seed among those that are not a positive
of the query: the benchmark measures real lengths, not retrieval quality, so a random document is
hard enough and keeps every query at one negative, as the synthetic benchmarks have.

The data is read from SHARED/data/scifact (SHARED: the environment variable, default the repo's
sibling ../shared) and never copied into the repo. Exits 77 (the "skipped" code of ctest and
automake) when the data is absent.

usage: scifact_train.py OUT_JSONL [--seed N]"""
import argparse
import json
import os
import random
import sys

SKIPPED = 77  # exit code: the data is not here
DEFAULT_SEED = 1
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scifact_dir():
    shared = os.environ.get("SHARED") or os.path.join(REPO, "..", "shared")
    path = os.path.join(shared, "data", "scifact")
    needed = ["corpus.jsonl", "queries.jsonl", os.path.join("qrels", "train.tsv")]
    missing = [n for n in needed if not os.path.isfile(os.path.join(path, n))]
    if missing:
        print(f"scifact_train: SciFact not found in {path} (missing {', '.join(missing)}); "
              f"set SHARED to the folder that holds data/scifact", file=sys.stderr)
        sys.exit(SKIPPED)
    return path


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def train_pairs(path):
    """(query id, corpus id) of every positive judgement, in file order (the header line skipped)."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        next(f)
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and int(fields[2]) > 0:
                pairs.append((fields[0], fields[1]))
    return pairs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = ap.parse_args()
    src = scifact_dir()
    corpus = read_jsonl(os.path.join(src, "corpus.jsonl"))
    docs = {d["_id"]: {"title": d.get("title", ""), "text": d["text"]} for d in corpus}
    doc_ids = [d["_id"] for d in corpus]  # file order: the draw depends only on the seed
    queries = {q["_id"]: q["text"] for q in read_jsonl(os.path.join(src, "queries.jsonl"))}
    pairs = train_pairs(os.path.join(src, "qrels", "train.tsv"))
    positives = {}
    for qid, did in pairs:
        positives.setdefault(qid, set()).add(did)

    rng = random.Random(args.seed)
    written = skipped = 0
    with open(args.out, "w", encoding="utf-8") as out:
        for qid, did in pairs:
            if qid not in queries or did not in docs:  # a judgement of a missing item: nothing to train on
                skipped += 1
                continue
            neg = rng.choice(doc_ids)
            while neg in positives[qid]:
                neg = rng.choice(doc_ids)
            line = {"query": queries[qid], "pos": [docs[did]], "neg": [docs[neg]]}
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
            written += 1
    print(f"scifact_train: {written} pairs from {len(positives)} queries -> {args.out}"
          + (f" ({skipped} judgements of missing items skipped)" if skipped else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
