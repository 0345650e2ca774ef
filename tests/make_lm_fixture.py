#!/usr/bin/env python3
"""Reference fixture for the fused LM head + cross-entropy (lm_head_xent) and stage 0's loss.

A tiny random Qwen2ForCausalLM (untied lm_head, so the head and the embedding table are separate
tensors) saved with save_pretrained into OUT/qwen2_lm/, and, in float64 from exactly the saved
float32 weights, the mean next-token cross-entropy over a few sequences of varied length, each run
alone (position t predicts token t + 1; a sequence's last token predicts nothing):
  ids.npy (T,) int32          all sequences back to back
  cu_seqlens.npy (B+1,) int32 sequence boundaries
  loss.npy () f32             sum of every predicted token's cross-entropy / their count
  grads.txt                   names of the tensors whose gradient of the loss is stored
  grad.<name>.npy             d loss / d <name> (f32), shaped as the tensor

  python3 tests/make_lm_fixture.py --out tests/fixtures
"""
import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
import transformers

from make_fixtures import INIT_STD, randomise, save_npy, set_eager, set_rope_theta

SEQ_LENS = [1, 5, 40]  # a one-token sequence (no target), short and longer ones
VOCAB = 300            # not a multiple of anything the kernels tile by
HIDDEN = 32
THETA = 10000.0
GRAD_NAMES = ["lm_head.weight", "model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight",
              "model.norm.weight"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures"))
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(4321)
    cfg = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False)
    set_rope_theta(cfg, THETA)
    set_eager(cfg)
    model = transformers.Qwen2ForCausalLM(cfg)
    randomise(model, gen)
    model = model.float().eval()
    out = os.path.join(args.out, "qwen2_lm")
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    gen_cfg = os.path.join(out, "generation_config.json")
    if os.path.exists(gen_cfg):
        os.remove(gen_cfg)

    model = model.double()
    seqs = [torch.randint(0, VOCAB, (n,), generator=gen) for n in SEQ_LENS]
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for ids in seqs:
        logits = model(input_ids=ids[None, :], use_cache=False).logits[0]  # (L, V)
        if len(ids) > 1:
            total = total + F.cross_entropy(logits[:-1], ids[1:], reduction="sum")
            count += len(ids) - 1
    loss = total / count
    loss.backward()
    params = dict(model.named_parameters())
    save_npy(os.path.join(out, "ids.npy"), torch.cat(seqs).numpy().astype(np.int32))
    save_npy(os.path.join(out, "cu_seqlens.npy"), np.concatenate([[0], np.cumsum(SEQ_LENS)]).astype(np.int32))
    save_npy(os.path.join(out, "loss.npy"), np.array(float(loss.detach()), dtype=np.float32))
    with open(os.path.join(out, "grads.txt"), "w") as f:
        for g in GRAD_NAMES:
            save_npy(os.path.join(out, f"grad.{g}.npy"), params[g].grad.numpy().astype(np.float32))
            f.write(g + "\n")
    print(f"qwen2_lm: loss {float(loss.detach()):.8f} over {count} targets (init std {INIT_STD}), files in {out}")


if __name__ == "__main__":
    main()
