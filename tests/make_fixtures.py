#!/usr/bin/env python3
"""Reference fixtures for the C towers, computed by Hugging Face transformers.

Creates tiny random Qwen2, Llama and BERT models, saves each with save_pretrained (safetensors,
fp32) into OUT/<name>/, and stores for a handful of sequences of varied length, each run alone
(no padding) in float64:
  ids.npy (T,) int32          all sequences back to back
  cu_seqlens.npy (B+1,) int32 sequence boundaries
  inputs.jsonl                one {"input_ids": [...]} line per sequence (for sn_embed)
  hidden.npy (T, C) f32       last hidden state of every token
  pooled.npy (B, C) f32       L2-normalised pooled embedding (last token for decoders, first for BERT)
  r.npy (B, C) f32            fixed random vector of the loss L = sum_b dot(pooled_b, r_b)
  grads.txt                   names of the tensors whose gradient of L is stored
  grad.<name>.npy             dL/d<name>, shaped as the tensor

Runs where torch + transformers exist (the GPU machine); the computation itself is on the CPU.
  python3 tests/make_fixtures.py --out tests/fixtures
"""
import argparse
import json
import os
import sys
import traceback

import numpy as np
import torch
import torch.nn.functional as F
import transformers

SEQ_LENS = [1, 2, 7, 33, 100]  # varied: one-token sequence, tile edges, a long one
VOCAB = 300
HIDDEN = 64
INIT_STD = 0.1  # larger than HF's 0.02 so attention is far from uniform and errors show
NORM_JITTER = 0.1  # norm weights 1 + N(0, 0.1): a norm that ignores its weight fails the test
BIAS_STD = 0.1  # biases non-zero so each bias is exercised
SIZE_LIMIT_BYTES = 2 * 1024 * 1024
LLAMA_THETA = 50000.0  # not the default, so a parser that ignores the config's theta fails


def set_rope_theta(cfg, theta):
    """transformers 4.x keeps config.rope_theta; 5.x keeps config.rope_parameters['rope_theta']."""
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict):
        rp["rope_theta"] = float(theta)
        rp.setdefault("rope_type", "default")
    else:
        cfg.rope_theta = float(theta)


def set_eager(cfg):
    try:
        cfg._attn_implementation = "eager"
    except Exception:  # older/newer versions may guard the attribute; eager is only a preference
        pass


def check_rope_theta(model, theta, head_dim):
    rot = getattr(model, "rotary_emb", None)
    if rot is None or not hasattr(rot, "inv_freq"):
        print("note: no rotary_emb.inv_freq to check theta against", file=sys.stderr)
        return
    got = float(rot.inv_freq[1])
    want = theta ** (-2.0 / head_dim)
    assert abs(got - want) <= 1e-6 * want, f"rope theta not applied: inv_freq[1]={got}, want {want}"


def randomise(model, gen):
    """Re-initialises every parameter: matrices N(0, INIT_STD), norm weights 1 + jitter, biases."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = "norm" in name.lower()
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * BIAS_STD)
            elif is_norm:
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * NORM_JITTER)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * INIT_STD)


def make_qwen2():
    cfg = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
        rope_theta=10000.0, attn_implementation="eager")
    set_rope_theta(cfg, 10000.0)
    set_eager(cfg)
    model = transformers.Qwen2Model(cfg)  # saved without the "model." prefix
    return model, model, "decoder", 10000.0, [
        "embed_tokens.weight",
        "layers.0.self_attn.q_proj.weight",
        "layers.0.self_attn.q_proj.bias",
        "layers.1.self_attn.k_proj.bias",
        "layers.1.self_attn.v_proj.bias",
        "layers.1.mlp.down_proj.weight",
        "layers.0.input_layernorm.weight",
        "norm.weight",
    ]


def make_llama():
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        rope_theta=LLAMA_THETA, attn_implementation="eager")
    theta = LLAMA_THETA
    set_rope_theta(cfg, theta)
    set_eager(cfg)
    full = transformers.LlamaForCausalLM(cfg)  # saved with "model." prefix and an untied lm_head
    return full, full.model, "decoder", theta, [
        "embed_tokens.weight",
        "layers.0.self_attn.q_proj.weight",
        "layers.1.self_attn.v_proj.weight",
        "layers.0.mlp.down_proj.weight",
        "layers.1.mlp.gate_proj.weight",
        "layers.1.post_attention_layernorm.weight",
        "norm.weight",
    ]


def make_bert():
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=128, type_vocab_size=2,
        hidden_act="gelu", layer_norm_eps=1e-12, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation="eager")
    set_eager(cfg)
    model = transformers.BertModel(cfg)  # with the (unused) pooler
    return model, model, "encoder", None, [
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.0.attention.self.query.bias",
        "encoder.layer.1.attention.self.value.bias",
        "encoder.layer.0.intermediate.dense.bias",
        "encoder.layer.1.output.dense.weight",
        "encoder.layer.1.attention.output.LayerNorm.weight",
        "encoder.layer.1.output.LayerNorm.bias",
    ]


def save_npy(path, array):
    np.save(path, np.ascontiguousarray(array))


def build(name, maker, out_root, seed):
    gen = torch.Generator().manual_seed(seed)
    top, base, kind, theta, grad_names = maker()
    randomise(top, gen)
    top = top.float().eval()
    out = os.path.join(out_root, name)
    os.makedirs(out, exist_ok=True)
    top.save_pretrained(out)
    gen_cfg = os.path.join(out, "generation_config.json")
    if os.path.exists(gen_cfg):  # not needed by an embedding model
        os.remove(gen_cfg)

    # The reference runs in float64 from exactly the saved float32 weights.
    top = top.double().eval()
    params = dict(base.named_parameters())
    for g in grad_names:
        assert g in params, f"{name}: no parameter {g}; have {sorted(params)[:8]}..."
    if theta is not None:
        check_rope_theta(base, theta, HIDDEN // base.config.num_attention_heads)

    seqs = [torch.randint(0, VOCAB, (n,), generator=gen) for n in SEQ_LENS]
    # r drawn in float32 and stored exactly, so the C test's loss is the reference's loss
    r = torch.randn((len(seqs), HIDDEN), generator=gen, dtype=torch.float32).double()
    hidden_rows, pooled_rows = [], []
    loss = torch.zeros((), dtype=torch.float64)
    for b, ids in enumerate(seqs):
        res = base(input_ids=ids[None, :], use_cache=False) if kind == "decoder" else base(input_ids=ids[None, :])
        h = res.last_hidden_state[0]  # (L, C)
        pooled = h[-1] if kind == "decoder" else h[0]
        pooled = F.normalize(pooled, dim=-1)
        loss = loss + torch.dot(pooled, r[b])
        hidden_rows.append(h.detach())
        pooled_rows.append(pooled.detach())
    loss.backward()

    ids_all = torch.cat(seqs).numpy().astype(np.int32)
    cu = np.concatenate([[0], np.cumsum(SEQ_LENS)]).astype(np.int32)
    save_npy(os.path.join(out, "ids.npy"), ids_all)
    save_npy(os.path.join(out, "cu_seqlens.npy"), cu)
    save_npy(os.path.join(out, "hidden.npy"), torch.cat(hidden_rows).numpy().astype(np.float32))
    save_npy(os.path.join(out, "pooled.npy"), torch.stack(pooled_rows).numpy().astype(np.float32))
    save_npy(os.path.join(out, "r.npy"), r.numpy().astype(np.float32))
    with open(os.path.join(out, "inputs.jsonl"), "w") as f:
        for ids in seqs:
            f.write(json.dumps({"input_ids": [int(i) for i in ids]}) + "\n")
    with open(os.path.join(out, "grads.txt"), "w") as f:
        for g in grad_names:
            grad = params[g].grad
            assert grad is not None and float(grad.abs().max()) > 0, f"{name}: zero gradient for {g}"
            save_npy(os.path.join(out, f"grad.{g}.npy"), grad.numpy().astype(np.float32))
            f.write(g + "\n")
    print(f"{name}: loss {float(loss):.6f}, files in {out}: {sorted(os.listdir(out))}")
    with open(os.path.join(out, "config.json")) as f:
        print(f.read())


def dir_bytes(root):
    total = 0
    for d, _, files in os.walk(root):
        total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures"))
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    failed = []
    for seed, (name, maker) in enumerate([("qwen2", make_qwen2), ("llama", make_llama), ("bert", make_bert)]):
        try:  # one model's failure should not cost the others' fixtures
            build(name, maker, args.out, 1234 + seed)
        except Exception:
            traceback.print_exc()
            failed.append(name)
    total = dir_bytes(args.out)
    print(f"fixtures total: {total} bytes")
    if total >= SIZE_LIMIT_BYTES:  # a warning, not an error: the files are still worth inspecting
        print(f"WARNING: fixtures are {total} bytes, over {SIZE_LIMIT_BYTES}", file=sys.stderr)
    if failed:
        sys.exit(f"failed: {failed}")


if __name__ == "__main__":
    main()
