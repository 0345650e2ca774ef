#!/usr/bin/env bash
# The encoder library on CUDA: with graphs (the default: a shape's second batch is recorded, later
# ones replay it) every call gives exactly the embeddings of the library without graphs, batch after
# batch and shape after shape; those are within the bf16 band of sn_embed --device cuda and of the
# fp32 CPU reference (max abs 3e-2 on unit vectors); the CPU library still equals sn_embed bit for
# bit; with SN_MATMUL_AUTOTUNE=1 sn_embed stays within the band of the CPU, and a bad value of it is
# warned about and read as 0; with (SN_PDL_GEMM=1) and without the programmatic edges into the
# GEMMs of a recorded graph that the probe saw wait (kernels/pdl_probe.cu) the graphs give the direct
# launches' embeddings exactly. A decoder tower (Qwen2, last token) and a BERT student (CLS +
# projection).
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
nvidia-smi -L >/dev/null 2>&1 || { echo "SKIP: no GPU"; exit 77; }
sn_test_needs_python numpy
source "$SRC/tests/encoder_towers.sh"
make_encoder_towers 32
for tower in query_tower student; do
  "$BUILD/sn_embed" --model run/final/$tower --input texts.jsonl --out $tower.cuda.npy --device cuda 2>> embed.log
  "$BUILD/sn_embed" --model run/final/$tower --input texts.jsonl --out $tower.cpu.npy 2>> embed.log
  # cuBLASLt's algorithms timed per shape (SN_MATMUL_AUTOTUNE=1): other kernels, the same maths
  SN_MATMUL_AUTOTUNE=1 "$BUILD/sn_embed" --model run/final/$tower --input texts.jsonl --out $tower.tuned.npy \
    --device cuda 2>> embed.log
done
# neither 0 nor 1: warned about once, read as 0 (the same embeddings as unset)
SN_MATMUL_AUTOTUNE=yes "$BUILD/sn_embed" --model run/final/query_tower --input texts.jsonl --out bad_switch.npy \
  --device cuda 2> bad_switch.log
[ "$(grep -c "SN_MATMUL_AUTOTUNE='yes' is neither 0 nor 1; read as 0" bad_switch.log)" = 1 ] ||
  { echo "FAIL: SN_MATMUL_AUTOTUNE=yes was not warned about once"; cat bad_switch.log; exit 1; }
python3 -c "import numpy as np, sys; sys.exit(not np.array_equal(np.load('bad_switch.npy'), np.load('query_tower.cuda.npy')))" ||
  { echo "FAIL: SN_MATMUL_AUTOTUNE=yes changed the embeddings"; exit 1; }
check_library() {
SCALINGNOTE_LIB="$BUILD/libscalingnote.so" PYTHONPATH="$SRC/python" python3 - <<'PY'
import json
import os
import numpy as np
from scalingnote import Encoder

BF16_BAND = 3e-2
texts = [json.loads(l)["text"] for l in open("texts.jsonl")]
for tower in ("query_tower", "student"):
    d = f"run/final/{tower}"
    want_gpu, want_cpu = np.load(f"{tower}.cuda.npy"), np.load(f"{tower}.cpu.npy")
    with Encoder(d, device="cuda", max_batch=4) as g, Encoder(d, device="cuda", max_batch=4, graphs=False) as plain, \
         Encoder(d) as cpu:
        ref = plain.encode(texts)
        for call in range(4):  # direct, recorded, replayed, replayed
            got = g.encode(texts)
            assert np.array_equal(got, ref), (tower, call, np.abs(got - ref).max())
        assert np.array_equal(cpu.encode(texts), want_cpu), tower
    gpu_err, cpu_err = np.abs(ref - want_gpu).max(), np.abs(ref - want_cpu).max()
    assert gpu_err < BF16_BAND and cpu_err < BF16_BAND, (tower, gpu_err, cpu_err)
    tuned_err = np.abs(np.load(f"{tower}.tuned.npy") - want_cpu).max()
    assert tuned_err < BF16_BAND, (tower, "SN_MATMUL_AUTOTUNE=1", tuned_err)
    # A stream of single queries: every shape recorded on its second sighting, replays exact.
    with Encoder(d, device="cuda", max_batch=1) as g, Encoder(d, device="cuda", max_batch=1, graphs=False) as plain:
        for rnd in range(3):
            for i, t in enumerate(texts):
                a, b = g.encode([t]), plain.encode([t])
                assert np.array_equal(a, b), (tower, rnd, i, np.abs(a - b).max())
    print(f"ok: {tower} (SN_PDL_GEMM={os.environ.get('SN_PDL_GEMM', 'unset')}): graphs give the direct launches' embeddings; max abs vs sn_embed cuda {gpu_err:.2e}, "
          f"vs the CPU {cpu_err:.2e}; autotuned GEMMs vs the CPU {tuned_err:.2e}")
PY
}
check_library
SN_PDL_GEMM=1 check_library
