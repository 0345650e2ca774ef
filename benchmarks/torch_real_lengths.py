#!/usr/bin/env python3
"""PyTorch + transformers side of benchmarks/real_lengths_gpu.sh: stage 1 on real lengths, each
batch padded to its own longest sequence, as a PyTorch user would write it.

Two random-init Qwen2 towers shaped as a tower description (configs/models/*.json), pure bf16
weights, fused AdamW, SDPA attention with a padding mask (right padding), last-real-token pooling,
L2-normalised embeddings, InfoNCE over in-batch + one hard negative. The token sequences are the
ones sn_train builds from the same training file (encode_item mirrors host/data/data_prompt.c);
batches are taken in file order, wrapping around, where sn_train samples them at random: the length
distribution is what the comparison needs, not the same batches.

Prints one JSON line: step_s, real_tok_s (the unpadded tokens, as sn_train's "tokens" counts),
padded_tok_s, pad_frac, peak_gib, ...
  torch_real_lengths.py --data TRAIN.jsonl --desc DESC.json --tokenizer DIR --batch-queries B
--lengths-only needs no torch (only the tokenizers package): the length statistics of the batches.
"""
import argparse
import json
import os
import time

QUERY_PROMPT = "{text}"          # the sn_train config of real_lengths_gpu.sh uses the same two
DOC_PROMPT = "{title} {text}"
TEMPERATURE = 0.05               # stage1.temperature's default
LR = 1e-5
WARMUP_STEPS = 3                 # untimed: allocation, cuBLAS/SDPA heuristics
DEFAULT_STEPS = 20
DEFAULT_MAX_QUERY_LEN = 64
DEFAULT_MAX_DOC_LEN = 512
GIB = 1024 ** 3
# host/tokenizer/tokenizer_load.c: a byte-level BPE tokenizer's EOS is the first of these it knows,
# tokenizer_config.json's eos_token in second place.
EOS_CANDIDATES = ("<|endoftext|>", None, "<|end_of_text|>", "</s>")


def load_tokenizer(path):
    """(tokenizers.Tokenizer, EOS id) of a tokenizer folder or tokenizer.json, picked as sn_train does."""
    from tokenizers import Tokenizer
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json") if os.path.isdir(path) else path)
    cfg_eos = None
    cfg_path = os.path.join(folder, "tokenizer_config.json")
    if os.path.exists(cfg_path):
        eos = json.load(open(cfg_path)).get("eos_token")
        cfg_eos = eos.get("content") if isinstance(eos, dict) else eos
    for name in EOS_CANDIDATES:
        name = cfg_eos if name is None else name
        if name and tok.token_to_id(name) is not None:
            return tok, tok.token_to_id(name)
    raise SystemExit(f"torch_real_lengths: {path}: no EOS token")


def render(template, title, text):
    """The prompt text as data_prompt.c renders it: with an empty title the lines that hold "{title}"
    but not "{text}" are left out; other "{title}"s become the title (or nothing)."""
    if not title:
        template = "\n".join(l for l in template.split("\n") if "{text}" in l or "{title}" not in l)
    prefix, suffix = template.split("{text}")
    return prefix.replace("{title}", title) + text + suffix.replace("{title}", title)


def encode_item(tok, eos_id, template, title, text, max_len):
    """data_prompt.c's sn_prompt_encode for a decoder tower: the rendered prompt encoded without
    special tokens (the Qwen tokenizer's post-processor adds none, so add_special changes nothing),
    cut to max_len - 1 tokens, then EOS. Only templates that end in "{text}" (both prompts here):
    sn_train then cuts the full encoding, as here; with a tail after "{text}" it would keep the
    tail and cut the text instead, which is not mirrored."""
    assert template.endswith("{text}"), "only templates ending in {text} are mirrored"
    ids = tok.encode(render(template, title, text), add_special_tokens=False).ids
    return ids[: max_len - 1] + [eos_id]


def read_examples(path, tok, eos_id, max_query_len, max_doc_len):
    """[(query ids, [pos ids, neg ids])] of a FlagEmbedding file with one positive and one negative
    a line (docs as strings or {title, text})."""
    def doc(d):
        return (d.get("title", ""), d["text"]) if isinstance(d, dict) else ("", d)
    out = []
    for line in open(path, encoding="utf-8"):
        if not line.strip():
            continue
        x = json.loads(line)
        q = encode_item(tok, eos_id, QUERY_PROMPT, "", x["query"], max_query_len)
        docs = [encode_item(tok, eos_id, DOC_PROMPT, *doc(d), max_doc_len) for d in (x["pos"][0], x["neg"][0])]
        out.append((q, docs))
    return out


def batches(examples, B, n):
    """n batches of B examples in file order, wrapping around: (queries, docs as pos0, neg0, pos1, ...)."""
    for s in range(n):
        rows = [examples[(s * B + i) % len(examples)] for i in range(B)]
        yield [q for q, _ in rows], [d for _, ds in rows for d in ds]


def length_stats(seqs_batches):
    """real tokens, padded tokens of a list of batches (each a list of sequences)."""
    real = sum(len(s) for b in seqs_batches for s in b)
    padded = sum(len(b) * max(len(s) for s in b) for b in seqs_batches)
    return real, padded


def build_model(desc_path):
    import torch
    from transformers import Qwen2Config, Qwen2Model
    d = json.load(open(desc_path))
    heads = d["heads"]
    cfg = Qwen2Config(vocab_size=d["vocab"], hidden_size=d["hidden"], num_hidden_layers=d["layers"],
                      num_attention_heads=heads, num_key_value_heads=d.get("kv_heads", heads),
                      head_dim=d.get("head_dim", d["hidden"] // heads), intermediate_size=d["intermediate"],
                      max_position_embeddings=d.get("max_positions", 32768), rope_theta=d.get("rope_theta", 1e6),
                      tie_word_embeddings=d.get("tie", True), rms_norm_eps=1e-6, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device("cuda"):  # initialised on the GPU: minutes less than on the CPU at 1.5B
        return Qwen2Model(cfg).bfloat16()


def to_device(seqs, pad_id):
    """Right-padded ids, attention mask and lengths of a batch, padded to its longest sequence."""
    import torch
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    lengths = torch.tensor([len(s) for s in seqs])
    return ids.cuda(non_blocking=True), mask.cuda(non_blocking=True), lengths.cuda(non_blocking=True)


def run(args, examples, eos_id):
    import copy
    import torch
    import torch.nn.functional as F
    qt = build_model(args.desc)
    if args.gradient_checkpointing:  # recompute each layer in backward, as stage1.recompute = layer
        qt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    dt = copy.deepcopy(qt)
    opt = torch.optim.AdamW(list(qt.parameters()) + list(dt.parameters()), lr=LR, fused=True)

    def embed(model, batch):
        ids, mask, lengths = batch
        # use_cache off: a training step has no use for the K/V cache transformers would build
        h = model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        last = h[torch.arange(h.shape[0], device=h.device), lengths - 1]  # the EOS of each row
        return F.normalize(last.float(), dim=-1)

    def step(batch):
        q, d = batch
        logits = embed(qt, q) @ embed(dt, d).t() / TEMPERATURE
        targets = 2 * torch.arange(logits.shape[0], device=logits.device)  # docs: pos0, neg0, pos1, ...
        F.cross_entropy(logits, targets).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    all_batches = list(batches(examples, args.batch_queries, WARMUP_STEPS + args.steps))
    # Host-side padding and copies are prepared up front: what is timed is the training step.
    dev_batches = [(to_device(q, eos_id), to_device(d, eos_id)) for q, d in all_batches]
    for b in dev_batches[:WARMUP_STEPS]:
        step(b)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in dev_batches[WARMUP_STEPS:]:
        step(b)
    torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    return secs, torch.cuda.max_memory_allocated() / GIB, all_batches[WARMUP_STEPS:]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--desc", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--batch-queries", type=int, required=True)
    ap.add_argument("--max-query-len", type=int, default=DEFAULT_MAX_QUERY_LEN)
    ap.add_argument("--max-doc-len", type=int, default=DEFAULT_MAX_DOC_LEN)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--name", default="")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="recompute each decoder layer in backward (sn_train's stage1.recompute = layer)")
    ap.add_argument("--lengths-only", action="store_true")
    args = ap.parse_args()
    tok, eos_id = load_tokenizer(args.tokenizer)
    examples = read_examples(args.data, tok, eos_id, args.max_query_len, args.max_doc_len)
    row = dict(shape=args.name, desc=os.path.basename(args.desc), queries=args.batch_queries, steps=args.steps,
               examples=len(examples), gradient_checkpointing=args.gradient_checkpointing)
    if args.lengths_only:
        timed = list(batches(examples, args.batch_queries, WARMUP_STEPS + args.steps))[WARMUP_STEPS:]
    else:
        secs, peak, timed = run(args, examples, eos_id)
    qr, qp = length_stats([q for q, _ in timed])
    dr, dp = length_stats([d for _, d in timed])
    real, padded = qr + dr, qp + dp
    row.update(real_tokens_step=real / args.steps, padded_tokens_step=padded / args.steps,
               pad_frac=1 - real / padded, query_pad_frac=1 - qr / qp, doc_pad_frac=1 - dr / dp)
    if not args.lengths_only:
        row.update(step_s=secs / args.steps, real_tok_s=real / secs, padded_tok_s=padded / secs, peak_gib=peak)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
