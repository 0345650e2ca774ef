#!/usr/bin/env python3
"""Deterministic synthetic retrieval data for the end-to-end tests: each example's query is a few
topic words, its positive a sentence that contains them among filler words, its negatives
sentences about other topics. Writes OUT/train.jsonl and a BEIR folder OUT/test/.

usage: synth_data.py OUT [--examples N] [--test-queries N] [--seed S]"""
import argparse, json, os, random

WORDS = ("apple river stone cloud engine garden silver window market forest yellow bridge "
         "candle rocket winter summer planet ocean violin tunnel castle desert island mirror "
         "signal harbor lantern meadow orchid pepper quartz saddle thunder velvet walnut zebra "
         "anchor basket canyon dragon falcon glacier hammer jungle kettle ladder magnet needle "
         "object pencil quiver ribbon shadow temple umbrella vessel wizard yogurt").split()
FILLER = "the a of and with near under over into from about this that some every".split()


def sentence(rng, topic, length=12):
    words = list(topic) + [rng.choice(FILLER + WORDS) for _ in range(length - len(topic))]
    rng.shuffle(words)
    return " ".join(words)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--test-queries", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--query-words", type=int, default=0, help="filler words added to each query")
    ap.add_argument("--doc-words", type=int, default=12, help="words in each document")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    os.makedirs(os.path.join(a.out, "test", "qrels"), exist_ok=True)
    topics = [tuple(rng.sample(WORDS, 3)) for _ in range(a.examples + a.test_queries)]
    with open(os.path.join(a.out, "train.jsonl"), "w") as f:
        for i, t in enumerate(topics[:a.examples]):
            query = " ".join(t) if not a.query_words else sentence(rng, t, 3 + a.query_words)
            ex = {"query": query, "pos": [sentence(rng, t, a.doc_words)]}
            if i % 2 == 0:
                ex["neg"] = [sentence(rng, rng.choice(topics), a.doc_words)]
            if i % 3 == 0:
                ex["pos"][0] = {"title": t[0], "text": ex["pos"][0]}
            f.write(json.dumps(ex) + "\n")
    test = topics[a.examples:]
    with open(os.path.join(a.out, "test", "corpus.jsonl"), "w") as c, \
         open(os.path.join(a.out, "test", "queries.jsonl"), "w") as q, \
         open(os.path.join(a.out, "test", "qrels", "test.tsv"), "w") as r:
        r.write("query-id\tcorpus-id\tscore\n")
        for i, t in enumerate(test):
            c.write(json.dumps({"_id": f"d{i}", "title": "", "text": sentence(rng, t)}) + "\n")
            q.write(json.dumps({"_id": f"q{i}", "text": " ".join(t)}) + "\n")
            r.write(f"q{i}\td{i}\t1\n")
        for j in range(3 * len(test)):  # distractors
            c.write(json.dumps({"_id": f"x{j}", "title": "", "text": sentence(rng, rng.choice(topics))}) + "\n")


if __name__ == "__main__":
    main()
