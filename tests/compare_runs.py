#!/usr/bin/env python3
"""compare_runs.py RUN_A RUN_B [WEIGHT_TOL]: two runs of one config on different numbers of ranks
(MPI, TCP, Slurm) follow each other: the same steps and token counts, losses within relative 1e-5,
and final towers within relative WEIGHT_TOL (default 1e-5) of the whole tower (the order of
floating-point sums differs). Runs with the bf16 optimizer state pass a wider WEIGHT_TOL: where the
sums differ in their last fp32 bit, a stochastic rounding may land one bf16 step (2^-8) apart."""
import json, sys, numpy as np
from safetensors.numpy import load_file
a, b = sys.argv[1], sys.argv[2]
weight_tol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-5
la = [json.loads(l) for l in open(f"{a}/metrics.jsonl")]
lb = [json.loads(l) for l in open(f"{b}/metrics.jsonl")]
assert len(la) == len(lb), (len(la), len(lb))
for x, y in zip(la, lb):
    assert (x["stage"], x["step"], x["tokens"]) == (y["stage"], y["step"], y["tokens"]), (x, y)
    assert abs(x["loss"] - y["loss"]) <= 1e-5 * abs(x["loss"]) + 1e-7, (x, y)
import os
worst = 0.0
for tower in ("query_tower", "doc_tower", "student"):
    p = f"{a}/final/{tower}/model.safetensors"
    if not os.path.exists(p): continue
    ta, tb = load_file(p), load_file(f"{b}/final/{tower}/model.safetensors")
    # Relative to the whole tower: a tensor whose exact gradient is zero (the key bias, to which
    # softmax is invariant) gets rounding noise that Adam scales to lr-sized steps, so its own
    # relative error says nothing about the reduction.
    va = np.concatenate([ta[k].ravel() for k in sorted(ta)])
    vb = np.concatenate([tb[k].ravel() for k in sorted(ta)])
    err = np.linalg.norm(va - vb) / np.linalg.norm(va)
    assert err <= weight_tol, (tower, err, weight_tol)
    worst = max(worst, err)
print(f"{b} matches {a}: {len(la)} steps, final losses {la[-1]['loss']:.6f} / {lb[-1]['loss']:.6f}, "
      f"weights within {worst:.2e}")
