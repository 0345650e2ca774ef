#!/usr/bin/env python3
"""PyTorch side of the kernel comparisons, run on the GPU machine in the same call as sn_bench.

1. Attention: torch scaled_dot_product_attention restricted to the flash backend, on the same
   packed shapes sn_bench times (equal-length sequences, so the packed batch is a plain (B, H, L, D)
   batch). GQA: K/V heads are expanded to Hq before timing (the flash backend's own layout).
   Forward time, and backward time = time(forward + backward) - time(forward).
2. InfoNCE unfused: logits GEMM, cross_entropy (log-softmax + NLL), backward through both
   embedding sets, fp32, the sequence that sn's fused contrastive_loss replaces.

Median of CUDA-event timings after warm-up, the calls back to back behind a GPU sleep (as sn_bench
does); --idle-gpu times each call from an idle GPU instead. Prints a table, or CSV with --csv.
"""
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

WARMUP, REPS = 5, 50


IDLE_GPU = "--idle-gpu" in sys.argv  # the earlier method: every call from an idle GPU
SLEEP_CYCLES_PER_S = 2.0e9  # at least the SM clock (1.98 GHz on the H100 here): the sleep lasts long enough
MIN_QUEUE_S = 2e-3
QUEUE_MARGIN = 3.0  # the sleep lasts this many times the host's enqueue time of all the calls


def median_ms(fn):
    """Median of per-call CUDA-event times. As in sn_bench, the calls run back to back behind a GPU
    sleep longer than the host needs to enqueue them all, so each event pair times the GPU's work
    for one call, not the host launching it."""
    fn()  # first call: one-time setup
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(WARMUP - 1):
        fn()
    enqueue_s = (time.perf_counter() - t0) / (WARMUP - 1)  # the host's share
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(REPS)]
    if not IDLE_GPU:
        torch.cuda._sleep(int(max(MIN_QUEUE_S, QUEUE_MARGIN * enqueue_s * REPS) * SLEEP_CYCLES_PER_S))
    for a, b in events:
        a.record()
        fn()
        b.record()
        if IDLE_GPU:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    times = sorted(a.elapsed_time(b) for a, b in events)
    return times[len(times) // 2]


def attention(B, L, Hq, Hkv, D, causal):
    dev = "cuda"
    q = torch.randn(B, Hq, L, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k0 = torch.randn(B, Hkv, L, D, device=dev, dtype=torch.bfloat16)
    v0 = torch.randn(B, Hkv, L, D, device=dev, dtype=torch.bfloat16)
    k = k0.repeat_interleave(Hq // Hkv, dim=1).detach().requires_grad_(True)
    v = v0.repeat_interleave(Hq // Hkv, dim=1).detach().requires_grad_(True)
    dout = torch.randn(B, Hq, L, D, device=dev, dtype=torch.bfloat16)

    def fwd():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))

    def fwd_bwd():
        out = fwd()
        torch.autograd.grad(out, (q, k, v), dout)

    with torch.no_grad():
        t_fwd = median_ms(fwd)
    t_all = median_ms(fwd_bwd)
    flops = 4.0 * B * L * L * Hq * D * (0.5 if causal else 1.0)
    return t_fwd, t_all - t_fwd, flops


def infonce_unfused(R, N, C):
    rows = (0.05 * torch.randn(R, C, device="cuda")).requires_grad_(True)
    cols = (0.05 * torch.randn(N, C, device="cuda")).requires_grad_(True)
    target = (torch.arange(R, device="cuda") * 2) % N

    def step():
        logits = rows @ cols.t() * 20.0
        loss = F.cross_entropy(logits, target)
        torch.autograd.grad(loss, (rows, cols))

    return median_ms(step)


def main():
    csv = "--csv" in sys.argv
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 GEMMs, as sn's contrastive_loss
    rows = []
    for shape in [(128, 128, 14, 2, 64, 1), (32, 512, 12, 2, 128, 1), (8, 2048, 14, 2, 64, 1), (256, 32, 6, 6, 64, 0)]:
        B, L, Hq, Hkv, D, causal = shape
        f, b, flops = attention(*shape)
        name = f"B={B} L={L} Hq={Hq} Hkv={Hkv} D={D} {'causal' if causal else 'bidir'}"
        rows.append(("torch_sdpa_flash_forward", name, f * 1e3, flops / (f * 1e-3) / 1e12))
        rows.append(("torch_sdpa_flash_backward", name, b * 1e3, 2.5 * flops / (b * 1e-3) / 1e12))
    for R, N, C in [(64, 128, 896), (512, 1024, 1536)]:
        t = infonce_unfused(R, N, C)
        rows.append(("torch_infonce_unfused", f"R={R} N={N} C={C} fp32", t * 1e3, 3 * 2.0 * R * N * C / (t * 1e-3) / 1e12))
    if csv:
        print("op,shape,median_us,TFLOP_per_s")
        for r in rows:
            print(f'{r[0]},"{r[1]}",{r[2]:.1f},{r[3]:.1f}')
    else:
        print(f"# torch {torch.__version__} on {torch.cuda.get_device_name()}")
        for r in rows:
            print(f"{r[0]:<28} {r[1]:<40} {r[2]:10.1f} us {r[3]:8.1f} TFLOP/s")


if __name__ == "__main__":
    main()
