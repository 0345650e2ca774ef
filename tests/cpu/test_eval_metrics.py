#!/usr/bin/env python3
"""sn_eval's metrics against pytrec_eval (trec_eval's own code) on random qrels and runs.

Random graded qrels (0-3), some queries without a relevant document, some missing from the run,
runs with many tied scores (so the score desc / docid desc tie rule matters), judged documents
that no run retrieves. Checks recall_10, recall_100, ndcg_cut_10 and recip_rank cut at 10 per
query and on the mean, within 1e-9. Then checks that malformed run and qrels files exit 2 naming
FILE:LINE, that stderr says over which queries the means are averaged and warns about each
kind of query left out or counted 0, and that qrels without any positive grade exit 2.
Usage: test_eval_metrics.py BUILD_DIR
"""
import json
import os
import random
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from testlib import SKIP, check, failures  # noqa: E402  (after the path insert)

TOL = 1e-9
NUM_TRIALS = 4

try:
    import pytrec_eval
except ImportError:
    print("skip: pytrec_eval is not importable (pip install pytrec-eval-terrier)")
    sys.exit(SKIP)

build = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SN_BUILD_DIR", "build")
sn_eval = os.path.join(build, "sn_eval")
if not os.access(sn_eval, os.X_OK):
    print(f"FAIL: {sn_eval} is not built")
    sys.exit(1)


def random_case(rng):
    ndocs = rng.randint(50, 400)
    docs = [f"d{rng.randint(0, 10**6)}" for _ in range(ndocs)]
    docs = sorted(set(docs))
    qrels, run = {}, {}
    for qi in range(rng.randint(20, 60)):
        qid = f"q{qi}"
        judged = rng.sample(docs, rng.randint(1, 30))
        style = rng.random()
        if style < 0.15:
            grades = [0] * len(judged)  # no relevant document: excluded from the mean
        else:
            grades = [rng.choice([0, 1, 1, 2, 3]) for _ in judged]
        qrels[qid] = {d: g for d, g in zip(judged, grades)}
        # Judged docs that no run retrieves (absent from the corpus) count in recall denominators.
        if style >= 0.15 and rng.random() < 0.5:
            qrels[qid][f"unretrievable{qi}"] = rng.choice([1, 2])
        if rng.random() < 0.1:
            continue  # query absent from the run: counts 0
        depth = rng.randint(1, min(len(docs), 150))
        retrieved = rng.sample(docs, depth)
        # Coarse scores give many ties; some runs are all tied.
        levels = 1 if rng.random() < 0.1 else rng.randint(2, 12)
        run[qid] = {d: float(rng.randint(0, levels - 1)) / 4.0 for d in retrieved}
    run["q_not_in_qrels"] = {docs[0]: 1.0}
    return qrels, run


def write_files(tmp, qrels, run, rng):
    qrels_path = os.path.join(tmp, "qrels.tsv")
    with open(qrels_path, "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q, judged in qrels.items():
            for d, g in judged.items():
                f.write(f"{q}\t{d}\t{g}\n")
    run_path = os.path.join(tmp, "run.trec")
    lines = [(q, d, s) for q, ret in run.items() for d, s in ret.items()]
    rng.shuffle(lines)  # file order and ranks must not matter: trec_eval re-sorts
    with open(run_path, "w") as f:
        for i, (q, d, s) in enumerate(lines):
            f.write(f"{q} Q0 {d} {i + 1} {s!r} tag\n")
    return qrels_path, run_path


def reference(qrels, run):
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"recall", "ndcg_cut", "recip_rank"})
    res = ev.evaluate(run)
    per = {}
    for q, judged in qrels.items():
        r = res.get(q)
        if r is None:
            per[q] = {"recall@10": 0.0, "recall@100": 0.0, "ndcg@10": 0.0, "mrr@10": 0.0}
            continue
        rr = r["recip_rank"]
        per[q] = {
            "recall@10": r["recall_10"],
            "recall@100": r["recall_100"],
            "ndcg@10": r["ndcg_cut_10"],
            # recip_rank looks at the whole list; 1/rank >= 1/10 iff the first hit is in the top 10
            "mrr@10": rr if rr >= 0.1 - 1e-12 else 0.0,
        }
    evaluated = [q for q, judged in qrels.items() if any(g > 0 for g in judged.values())]
    mean = {m: sum(per[q][m] for q in evaluated) / len(evaluated) for m in per[evaluated[0]]}
    return per, mean, len(evaluated)


def run_sn_eval(args):
    return subprocess.run([sn_eval] + args, capture_output=True, text=True)


rng = random.Random(1234)
with tempfile.TemporaryDirectory() as tmp:
    for trial in range(NUM_TRIALS):
        qrels, run = random_case(rng)
        qrels_path, run_path = write_files(tmp, qrels, run, rng)
        out = os.path.join(tmp, "metrics.json")
        p = run_sn_eval(["--run", run_path, "--qrels", qrels_path, "--out", out])
        check(p.returncode == 0, f"trial {trial}: sn_eval exited {p.returncode}: {p.stderr}")
        if p.returncode != 0:
            continue
        got = json.load(open(out))
        per, mean, nq = reference(qrels, run)
        check(got["num_queries"] == nq, f"trial {trial}: num_queries {got['num_queries']} != {nq}")
        for q, ref in per.items():
            for m, v in ref.items():
                g = got["per_query"][q][m]
                check(abs(g - v) <= TOL, f"trial {trial} query {q} {m}: sn_eval {g!r} pytrec_eval {v!r}")
        for m, v in mean.items():
            check(abs(got[m] - v) <= TOL, f"trial {trial} mean {m}: sn_eval {got[m]!r} pytrec_eval {v!r}")
        # MTEB's names of the same values, beside ours (main_score: nDCG@10 as MTEB's retrieval).
        mteb = {"ndcg_at_10": "ndcg@10", "recall_at_10": "recall@10", "recall_at_100": "recall@100",
                "mrr_at_10": "mrr@10", "main_score": "ndcg@10"}
        for k, ours in mteb.items():
            check(k in got and got[k] == got[ours], f"trial {trial}: MTEB key {k} missing or != {ours}")
            q0 = next(iter(got["per_query"].values()), None)
            check(q0 is None or q0.get(k) == q0[ours], f"trial {trial}: per-query MTEB key {k}")
        # What the means cover, said on stderr: the counts as pytrec_eval's inputs give them.
        no_rel = sum(1 for j in qrels.values() if not any(g > 0 for g in j.values()))
        missing = sum(1 for q, j in qrels.items() if any(g > 0 for g in j.values()) and q not in run)
        unjudged = sum(1 for q in run if q not in qrels)
        want = [f"metrics averaged over {nq} queries with at least one relevant document"]
        if missing:
            want.append(f"warning: {missing} judged quer{'y has' if missing == 1 else 'ies have'} no results in the run")
        if no_rel:
            want.append(f"warning: {no_rel} judged quer{'y has' if no_rel == 1 else 'ies have'} no relevant document")
        if unjudged:
            want.append(f"warning: {unjudged} quer{'y' if unjudged == 1 else 'ies'} in the run ha{'s' if unjudged == 1 else 've'} no judgments")
        for w in want:
            check(w in p.stderr, f"trial {trial}: stderr lacks '{w}': {p.stderr.strip()}")
        print(f"trial {trial}: {len(per)} queries, {nq} evaluated, ndcg@10 {mean['ndcg@10']:.4f} "
              f"recall@100 {mean['recall@100']:.4f} mrr@10 {mean['mrr@10']:.4f}")

    # Bad input: exit 2 and FILE:LINE in the message.
    good_qrels = os.path.join(tmp, "good_qrels.tsv")
    with open(good_qrels, "w") as f:
        f.write("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    good_run = os.path.join(tmp, "good.trec")
    with open(good_run, "w") as f:
        f.write("q1 Q0 d1 1 0.5 t\n")
    bad_cases = [
        ("bad_score.trec", "q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 high t\n", "run", ":2:"),
        ("short.trec", "q1 Q0 d1\n", "run", ":1:"),
        ("dup.trec", "q1 Q0 d1 1 0.5 t\nq1 Q0 d1 2 0.4 t\n", "run", ":2:"),
        ("empty.trec", "\n", "run", ": no result lines"),
        ("bad_rel.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\tyes\n", "qrels", ":3:"),
        ("fields.tsv", "query-id\tcorpus-id\tscore\nq1\td1\n", "qrels", ":2:"),
        ("dup.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t2\n", "qrels", ":3:"),
    ]
    for name, text, kind, where in bad_cases:
        path = os.path.join(tmp, name)
        with open(path, "w") as f:
            f.write(text)
        args = ["--run", path, "--qrels", good_qrels] if kind == "run" else ["--run", good_run, "--qrels", path]
        p = run_sn_eval(args)
        check(p.returncode == 2, f"{name}: expected exit 2, got {p.returncode}")
        check(path + where in p.stderr, f"{name}: expected '{path}{where}' in: {p.stderr.strip()}")

    # Qrels without any positive grade: no query can be evaluated, so exit 2 instead of zeros.
    zero_qrels = os.path.join(tmp, "zero_qrels.tsv")
    with open(zero_qrels, "w") as f:
        f.write("query-id\tcorpus-id\tscore\nq1\td1\t0\nq2\td2\t0\n")
    p = run_sn_eval(["--run", good_run, "--qrels", zero_qrels])
    check(p.returncode == 2 and f"{zero_qrels}: none of its 2 judgments has a positive score" in p.stderr,
          f"all-zero qrels: expected exit 2 naming the file, got {p.returncode}: {p.stderr.strip()}")

print("test_eval_metrics:", "FAIL" if failures() else "ok", f"({failures()} failures)")
sys.exit(1 if failures() else 0)
