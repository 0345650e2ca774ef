#!/usr/bin/env bash
# Stage 0 (causal-LM pretraining) data-parallel on the CPU backend over MPI: 2 ranks follow the
# 1-rank run on the same global batch (losses, the held-out perplexity and the final weights of
# RUN/final/lm up to the order of floating-point sums, relative 1e-5), replicated with the
# overlapped all-reduce and under ZeRO-2 (the LM head's gradient joins the last region's
# reduce-scatter), with gradient accumulation, an untied head and a tied one.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
sn_test_needs_command mpirun
sn_test_needs_python numpy safetensors
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
python3 - <<'PY'
import json, random
random.seed(5)
words = "a dense model reads text and learns the next word of many short documents , .".split()
with open("text.jsonl", "w") as f:
    for _ in range(60): f.write(json.dumps({"text": " ".join(random.choice(words) for _ in range(random.randint(5, 40)))}) + "\n")
with open("heldout.txt", "w") as f: f.write(" ".join(random.choice(words) for _ in range(200)))
PY
cat > cfg.json <<JSON
{"seed": 9, "threads": 1, "comm_timeout_s": 120,
 "stage0": {"model_desc": {"arch": "qwen2", "layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2,
                           "intermediate": 64, "vocab": 4096, "tie": false},
            "tokenizer": "$SRC/configs/default/decoder/tokenizer.json",
            "data": "text.jsonl", "eval_data": "heldout.txt", "seq_len": 16, "batch_seqs": 4, "grad_accum": 2,
            "steps": 4, "optim": {"lr": 2e-3, "warmup_steps": 1}}}
JSON
compare() {  # compare RUN_A RUN_B
  python3 - "$1" "$2" <<'PY'
import json, sys, numpy as np
from safetensors.numpy import load_file
a, b = sys.argv[1], sys.argv[2]
la = [json.loads(l) for l in open(f"{a}/metrics.jsonl")]
lb = [json.loads(l) for l in open(f"{b}/metrics.jsonl")]
assert len(la) == len(lb) == 4, (len(la), len(lb))
for x, y in zip(la, lb):
    assert (x["stage"], x["step"], x["tokens"]) == (y["stage"], y["step"], y["tokens"]), (x, y)
    assert abs(x["loss"] - y["loss"]) <= 1e-5 * abs(x["loss"]), (x, y)
ea, eb = json.load(open(f"{a}/eval/stage0.json")), json.load(open(f"{b}/eval/stage0.json"))
assert ea["windows"] == eb["windows"] and abs(ea["perplexity"] - eb["perplexity"]) <= 1e-5 * ea["perplexity"], (ea, eb)
ta, tb = load_file(f"{a}/final/lm/model.safetensors"), load_file(f"{b}/final/lm/model.safetensors")
assert sorted(ta) == sorted(tb)
va = np.concatenate([ta[k].ravel() for k in sorted(ta)])
vb = np.concatenate([tb[k].ravel() for k in sorted(ta)])
err = np.linalg.norm(va - vb) / np.linalg.norm(va)
assert err <= 1e-5, err
print(f"ok: {b} follows {a}: {len(la)} steps, perplexity {eb['perplexity']:.4f}, weights rel {err:.2e}")
PY
}
run() {  # run NPROCS CONFIG RUN_DIR [--set ...]
  local np=$1 cfg=$2 dir=$3; shift 3
  mpirun -np "$np" --oversubscribe "$BUILD/sn_train" --config "$cfg" --stage 0 --set run_dir="$dir" "$@" \
    > "$dir.log" 2>&1 || { cat "$dir.log"; echo "FAIL: $dir"; exit 1; }
}
fail=0
"$BUILD/sn_train" --config cfg.json --stage 0 --set run_dir=one > one.log 2>&1 || { cat one.log; exit 1; }
run 2 cfg.json two --set dist.overlap=true --set dist.check_replicas_every=1
compare one two || fail=1
run 2 cfg.json two_zero2 --set dist.zero=2 --set dist.check_replicas_every=1
compare one two_zero2 || fail=1
sed 's/"tie": false/"tie": true/' cfg.json > tied.json
"$BUILD/sn_train" --config tied.json --stage 0 --set run_dir=one_tied > one_tied.log 2>&1 || { cat one_tied.log; exit 1; }
run 2 tied.json two_tied_zero2 --set dist.zero=2
compare one_tied two_tied_zero2 || fail=1
exit $fail
