#!/usr/bin/env python3
"""Reference fixture for the LoRA towers, computed by transformers + peft.

A tiny random Qwen2Model (the qwen2 shapes of make_fixtures.py) with a peft LoRA adapter on all
seven linears of every block (r 4, alpha 8, no dropout), A and B both random and non-zero so the
update and both gradients carry signal. Writes into OUT (default tests/fixtures/lora_qwen2):
  base/                        the base, save_pretrained (config.json, model.safetensors, fp32)
  adapter/                     the adapter, PeftModel.save_pretrained (adapter_config.json,
                               adapter_model.safetensors)
  ids.npy, cu_seqlens.npy      the sequences back to back (int32), as make_fixtures.py
  hidden.npy (T, C) f32        last hidden state of base + adapter, each sequence run alone
  pooled.npy (B, C) f32        L2-normalised last-token embedding
  r.npy (B, C) f32             the loss L = sum_b dot(pooled_b, r_b)
  grads.txt                    adapter tensor names (as ours: "layers.0.self_attn.q_proj.lora_A.weight")
  grad.<name>.npy              dL/d<name>
The reference runs in float64 from exactly the saved float32 values.

Runs where torch, transformers and peft exist (the GPU machine); the computation is on the CPU.
  python3 tests/make_lora_fixture.py --out tests/fixtures/lora_qwen2
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (its model shapes, randomise, save conventions)
import peft  # noqa: E402

RANK = 4
ALPHA = 8
ADAPTER_STD = 0.1
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEED = 4321


def our_name(peft_name):
    """'base_model.model.layers.0.self_attn.q_proj.lora_A.default.weight' -> 'layers.0....lora_A.weight'."""
    name = peft_name.replace(".default", "")
    for prefix in ("base_model.model.model.", "base_model.model."):
        if name.startswith(prefix):
            return name[len(prefix):]
    raise ValueError(f"unexpected peft parameter name {peft_name}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "lora_qwen2")
    ap.add_argument("--out", default=default_out)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, transformers {mf.transformers.__version__}, peft {peft.__version__}")
    gen = torch.Generator().manual_seed(SEED)
    base, _, _, theta, _ = mf.make_qwen2()
    mf.randomise(base, gen)
    base = base.float().eval()
    os.makedirs(args.out, exist_ok=True)
    base.save_pretrained(os.path.join(args.out, "base"))
    gen_cfg = os.path.join(args.out, "base", "generation_config.json")
    if os.path.exists(gen_cfg):
        os.remove(gen_cfg)

    cfg = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS, bias="none")
    model = peft.get_peft_model(base, cfg)
    lora_params = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(lora_params) == 2 * len(TARGETS) * base.config.num_hidden_layers, sorted(lora_params)
    with torch.no_grad():
        for p in lora_params.values():
            p.copy_(torch.randn(p.shape, generator=gen) * ADAPTER_STD)
    model.save_pretrained(os.path.join(args.out, "adapter"))

    model = model.double().eval()
    seqs = [torch.randint(0, mf.VOCAB, (n,), generator=gen) for n in mf.SEQ_LENS]
    r = torch.randn((len(seqs), mf.HIDDEN), generator=gen, dtype=torch.float32).double()
    hidden_rows, pooled_rows = [], []
    loss = torch.zeros((), dtype=torch.float64)
    for b, ids in enumerate(seqs):
        h = model(input_ids=ids[None, :], use_cache=False).last_hidden_state[0]  # (L, C)
        pooled = F.normalize(h[-1], dim=-1)
        loss = loss + torch.dot(pooled, r[b])
        hidden_rows.append(h.detach())
        pooled_rows.append(pooled.detach())
    loss.backward()

    out = args.out
    mf.save_npy(os.path.join(out, "ids.npy"), torch.cat(seqs).numpy().astype(np.int32))
    mf.save_npy(os.path.join(out, "cu_seqlens.npy"), np.concatenate([[0], np.cumsum(mf.SEQ_LENS)]).astype(np.int32))
    mf.save_npy(os.path.join(out, "hidden.npy"), torch.cat(hidden_rows).numpy().astype(np.float32))
    mf.save_npy(os.path.join(out, "pooled.npy"), torch.stack(pooled_rows).numpy().astype(np.float32))
    mf.save_npy(os.path.join(out, "r.npy"), r.numpy().astype(np.float32))
    with open(os.path.join(out, "grads.txt"), "w") as f:
        for name, p in sorted(lora_params.items()):
            assert p.grad is not None and float(p.grad.abs().max()) > 0, f"zero gradient for {name}"
            mine = our_name(name)
            mf.save_npy(os.path.join(out, f"grad.{mine}.npy"), p.grad.numpy().astype(np.float32))
            f.write(mine + "\n")
    total = mf.dir_bytes(out)
    print(f"loss {float(loss):.6f}; {total} bytes in {out}: {sorted(os.listdir(out))}")
    if total >= mf.SIZE_LIMIT_BYTES:
        print(f"WARNING: fixture is {total} bytes, over {mf.SIZE_LIMIT_BYTES}", file=sys.stderr)


if __name__ == "__main__":
    main()
