"""benchmarks/scaling/probe_lm.py: the figures the scaling study's reading rests on.

A tiny random Qwen2 LM (the default decoder tokenizer) gives input-dependent mean-pooled states
and a table with no common row; the same model with one large vector added to every embedding row
(what a unigram-phase LM learns, docs/SCALING.md) gives collapsed states (mean cosine near 1,
input share near 0) and a table whose mean row dominates. The unigram cross-entropy is checked
against a direct count; the KL is >= 0; --help exits 0; an unknown --eos token exits 2. argv[1] is
the build folder (unused). Exit 77 (skip) without torch/transformers/tokenizers.
"""
import json
import math
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from testlib import SKIP, check, failures  # noqa: E402  (after the path insert)

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PROBE = os.path.join(ROOT, "benchmarks", "scaling", "probe_lm.py")
TOKENIZER = os.path.join(ROOT, "configs", "default", "decoder", "tokenizer.json")
COMMON_ROW_SCALE = 5.0  # the added common row's norm over a row's (about 0.02 * sqrt(hidden))

try:
    import numpy as np
    import torch
    from tokenizers import Tokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM
except ImportError as e:  # pragma: no cover - depends on the machine
    print(f"SKIP: python torch/transformers/tokenizers not available ({e})")
    sys.exit(SKIP)

WORDS = ("library tool server client font theme driver kernel module python perl rust game editor "
         "viewer converter daemon plugin documentation compiler parser network audio video image").split()


def texts(n, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 20)))) for _ in range(n)]


def probe(tmp, model_dir, *extra):
    out = os.path.join(tmp, "probe.json")
    r = subprocess.run([sys.executable, PROBE, model_dir, "--tokenizer", TOKENIZER, "--pretrain",
                        os.path.join(tmp, "pretrain.jsonl"), "--corpus", os.path.join(tmp, "corpus.jsonl"),
                        "--docs", "20", "--json", out, *extra], capture_output=True, text=True)
    return r, (json.load(open(out)) if r.returncode == 0 else None)


with tempfile.TemporaryDirectory() as tmp:
    pretrain, corpus = texts(200, 1), texts(30, 2)
    with open(os.path.join(tmp, "pretrain.jsonl"), "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in pretrain)
    with open(os.path.join(tmp, "corpus.jsonl"), "w") as f:
        f.writelines(json.dumps({"_id": str(i), "title": "", "text": t}) + "\n" for i, t in enumerate(corpus))
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=4096, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                      max_position_embeddings=128)
    model = Qwen2ForCausalLM(cfg).eval()
    model.save_pretrained(os.path.join(tmp, "random"))
    with torch.no_grad():
        e = model.get_input_embeddings().weight
        common = torch.randn(e.shape[1])
        e += common / common.norm() * COMMON_ROW_SCALE * e.norm(dim=1).mean()
    model.save_pretrained(os.path.join(tmp, "collapsed"))

    r, rnd = probe(tmp, os.path.join(tmp, "random"))
    check(r.returncode == 0, f"random model: exit {r.returncode}: {r.stderr[-500:]}")
    r, col = probe(tmp, os.path.join(tmp, "collapsed"))
    check(r.returncode == 0, f"collapsed model: exit {r.returncode}: {r.stderr[-500:]}")
    if rnd and col:
        check(rnd["mean"]["input_share"] > 0.3, f"random model: mean-pooled input share {rnd['mean']['input_share']:.3f}, expected > 0.3")
        check(rnd["embed_table"]["mean_row_share"] < 0.05, f"random table: mean row share {rnd['embed_table']['mean_row_share']:.3f}")
        check(col["mean"]["input_share"] < 0.05, f"collapsed model: mean-pooled input share {col['mean']['input_share']:.3f}, expected < 0.05")
        check(col["mean"]["mean_cosine"] > 0.95, f"collapsed model: mean cosine {col['mean']['mean_cosine']:.3f}, expected > 0.95")
        check(col["embed_table"]["mean_row_share"] > 0.9, f"collapsed table: mean row share {col['embed_table']['mean_row_share']:.3f}")
        check(rnd["kl_to_unigram"] >= 0 and col["kl_to_unigram"] >= 0, "KL below 0")
        check(abs(rnd["lm_xent"] - math.log(4096)) < 0.1, f"random LM loss {rnd['lm_xent']:.3f}, expected about ln 4096")
        # the unigram cross-entropy by a direct count (add-one, EOS after every pretraining document)
        tok = Tokenizer.from_file(TOKENIZER)
        eos = tok.token_to_id("<|endoftext|>")
        counts = np.ones(4096)
        for t in pretrain:
            np.add.at(counts, tok.encode(t, add_special_tokens=False).ids, 1)
            counts[eos] += 1
        logp = np.log(counts / counts.sum())
        nll = n = 0
        for t in corpus[:20]:
            ids = tok.encode(t).ids[:63] + [eos]
            nll -= logp[ids[1:]].sum()
            n += len(ids) - 1
        check(abs(rnd["unigram_xent"] - nll / n) < 1e-9, f"unigram cross-entropy {rnd['unigram_xent']} != {nll / n}")
    r, _ = probe(tmp, os.path.join(tmp, "random"), "--eos", "<no such token>")
    check(r.returncode == 2 and "--eos" in r.stderr, f"unknown --eos: exit {r.returncode}, stderr {r.stderr[-300:]}")
    r = subprocess.run([sys.executable, PROBE, "--help"], capture_output=True, text=True)
    check(r.returncode == 0 and "--pretrain" in r.stdout, "--help")

print("FAIL" if failures() else "OK: probe_lm")
sys.exit(1 if failures() else 0)
