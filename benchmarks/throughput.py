#!/usr/bin/env python3
"""Throughput of an sn_train run from its metrics.jsonl, computed as ../shared/bench does:
MFU = (6 N tokens + causal attention FLOPs) / time / peak, N = non-embedding parameters of the
tower description (configs/models/*.json), attention counted for a dual-tower stage-1 step of B
queries of Lq tokens and (1 + negatives) * B documents of Ld tokens (forward + backward = 3x).
Shared by e2e_gpu.sh and sizes_gpu.sh.

usage (CLI): throughput.py METRICS_JSONL DESC STAGE [B LQ LD DOCS_PER_QUERY] -> one JSON line"""
import json, sys

PEAK_FLOPS = 989e12   # H200/H100 SXM dense bf16 datasheet figure, the baseline's denominator
WARMUP_ROWS = 4       # timing starts at this metric row: earlier steps include allocation and warm-up


def nonembed(desc_path):
    """(non-embedding parameters, layers, hidden) of a tower description."""
    d = json.load(open(desc_path))
    C, L, H = d["hidden"], d["layers"], d["heads"]
    kv = d.get("kv_heads", H); D = d.get("head_dim", C // H); I = d["intermediate"]
    per_layer = C * H * D + H * D + 2 * (C * kv * D + kv * D) + H * D * C + 3 * C * I + 2 * C
    return L * per_layer + C, L, C


def summarize(rows, stage, desc_path, B=None, Lq=None, Ld=None, docs_per_query=2):
    """step_s, tok_s, tflops, mfu of one stage's rows after the warm-up rows."""
    r = [x for x in rows if x.get("stage") == stage and "step" in x]
    if len(r) <= WARMUP_ROWS + 1:
        raise SystemExit(f"throughput: only {len(r)} stage-{stage} metric rows, need more than {WARMUP_ROWS + 1}")
    warm, last = r[WARMUP_ROWS], r[-1]
    steps = last["step"] - warm["step"]; secs = last["elapsed_s"] - warm["elapsed_s"]
    toks = sum(x["tokens"] for x in r if x["step"] > warm["step"])
    N, L, C = nonembed(desc_path)
    flops = 6 * N * toks
    if B:  # causal attention of a stage-1 step: QK^T and PV, 2 FLOPs a MAC, half the square, x3
        attn = 2 * 2 * L * C * (B * Lq * Lq + docs_per_query * B * Ld * Ld) * 3 / 2
        flops += attn * steps
    return dict(step_s=secs / steps, tok_s=toks / secs, tflops=flops / secs / 1e12, mfu=flops / secs / PEAK_FLOPS)


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) not in (3, 7):
        raise SystemExit(__doc__)
    rows = [json.loads(l) for l in open(a[0])]
    extra = [int(x) for x in a[3:]]
    print(json.dumps(summarize(rows, int(a[2]), a[1], *extra)))
