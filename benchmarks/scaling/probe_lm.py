#!/usr/bin/env python3
"""How input-dependent a decoder's representations are (docs/SCALING.md, "Why the pretrained init
loses at CPU scale"). For a stage-0 LM folder (RUN/final/lm) or an exported tower, over the first
--docs documents of a BEIR corpus, each tokenized as stage 1 and sn_eval do (the tokenizer's
specials, --max-len tokens, EOS appended):

- the unigram cross-entropy of those documents under the token frequencies of the pretraining text
  (--pretrain, add-one smoothed), and for an LM its own next-token loss and its mean KL divergence
  from that unigram distribution per position: an LM whose loss is the unigram's and whose KL is
  near 0 predicts the same distribution whatever it reads;
- of the embedding table: the share of the rows' mean squared norm that is their common mean row,
  and the share of the centred table's variance in its first principal direction;
- of the final hidden states (after the final norm), pooled at the last token (EOS) and by mean:
  the mean pairwise cosine and the input-dependent share of the squared norm, 1 - |mean|^2 / mean
  |h|^2 (0: every document gets the same vector).

  python3 benchmarks/scaling/probe_lm.py MODEL_DIR --tokenizer T --pretrain P.jsonl --corpus C.jsonl
"""
import argparse
import json
import sys

import numpy as np

UNIGRAM_DOCS = 20000  # pretraining documents counted for the unigram (the frequencies settle well before)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a stage-0 LM folder or an exported decoder tower (config.json, model.safetensors)")
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json of the model")
    ap.add_argument("--pretrain", required=True, help="pretraining text, JSONL of {\"text\"} (the unigram's counts)")
    ap.add_argument("--corpus", required=True, help="BEIR corpus.jsonl whose first documents are probed")
    ap.add_argument("--docs", type=int, default=300, help="documents probed (default 300)")
    ap.add_argument("--max-len", type=int, default=64, help="tokens a document, EOS included (default 64)")
    ap.add_argument("--eos", default="<|endoftext|>", help="the EOS token stage 0 and stage 1 append (default <|endoftext|>)")
    ap.add_argument("--json", help="also write the figures to this file")
    return ap.parse_args(argv)


def unigram_logp(tok, path, vocab, eos_id):
    texts = []
    with open(path) as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if len(texts) == UNIGRAM_DOCS:
                break
    counts = np.ones(vocab, np.float64)  # add-one
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        np.add.at(counts, enc.ids, 1)
        counts[eos_id] += 1  # stage 0 ends every document with EOS
    return np.log(counts / counts.sum())


def spread(vectors):
    v = np.asarray(vectors, np.float64)
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    n = len(u)
    cos = (u @ u.T).sum()
    mu = v.mean(0)
    return {"mean_cosine": (cos - n) / (n * n - n), "input_share": 1 - (mu @ mu) / (v * v).sum(1).mean()}


def table_stats(table):
    mu = table.mean(0)
    sv = np.linalg.svd(table - mu, compute_uv=False)
    return {"mean_row_share": float(mu @ mu / (table * table).sum(1).mean()), "pc1_share": float(sv[0] ** 2 / (sv**2).sum())}


def main(argv):
    a = parse_args(argv)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(a.tokenizer)
    eos_id = tok.token_to_id(a.eos)
    if eos_id is None:
        print(f"error: --eos: the tokenizer {a.tokenizer} has no token {a.eos!r}", file=sys.stderr)
        return 2
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    torch.set_num_threads(1)
    causal = any(x.endswith("ForCausalLM") for x in AutoConfig.from_pretrained(a.model).architectures or [])
    model = (AutoModelForCausalLM if causal else AutoModel).from_pretrained(a.model, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    logp_uni = unigram_logp(tok, a.pretrain, vocab, eos_id)
    docs = []
    with open(a.corpus) as f:
        for line in f:
            docs.append(json.loads(line)["text"])
            if len(docs) == a.docs:
                break
    uni_nll = lm_nll = kl = 0.0
    n_pred = 0
    last, mean = [], []
    lu = torch.tensor(logp_uni, dtype=torch.float32)
    with torch.no_grad():
        for d in docs:
            ids = tok.encode(d, add_special_tokens=True).ids[: a.max_len - 1] + [eos_id]
            x = torch.tensor([ids])
            out = model(x, output_hidden_states=True)
            uni_nll -= float(logp_uni[ids[1:]].sum())
            n_pred += len(ids) - 1
            if causal:
                lp = torch.log_softmax(out.logits[0], -1)
                lm_nll -= lp[:-1].gather(1, x[0, 1:, None]).sum().item()
                kl += (lp.exp() * (lp - lu)).sum(-1).mean().item()
            h = out.hidden_states[-1][0] if causal else out.last_hidden_state[0]  # after the final norm
            last.append(h[-1].numpy())
            mean.append(h.mean(0).numpy())
    res = {"model": a.model, "docs": len(docs), "unigram_xent": uni_nll / n_pred,
           "embed_table": table_stats(model.get_input_embeddings().weight.detach().numpy().astype(np.float64)),
           "last": spread(last), "mean": spread(mean)}
    if causal:
        res["lm_xent"] = lm_nll / n_pred
        res["kl_to_unigram"] = kl / len(docs)
    print(f"{a.model}: {len(docs)} documents")
    line = f"  unigram cross-entropy {res['unigram_xent']:.4f} nats"
    if causal:
        line += f"; LM loss {res['lm_xent']:.4f}; KL(LM || unigram) {res['kl_to_unigram']:.4f} a position"
    print(line)
    e = res["embed_table"]
    print(f"  embedding table: mean row {e['mean_row_share']:.3f} of the squared row norm; first PC {e['pc1_share']:.3f} of the centred variance")
    for k in ("last", "mean"):
        print(f"  {k}-pooled: mean pairwise cosine {res[k]['mean_cosine']:.4f}, input-dependent share {res[k]['input_share']:.4f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
