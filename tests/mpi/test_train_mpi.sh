#!/usr/bin/env bash
# Data parallelism on the CPU backend over MPI: stage 1 with cross-device negatives (plain and
# symmetric) and stage 2 on 2 and 3 ranks must follow the 1-rank run on the same global batch:
# the same losses and final weights up to the order of floating-point sums (relative 1e-5).
# The same with ZeRO-1 (optimizer state sharded across ranks) and ZeRO-2 (gradients sharded too,
# summed layer by layer during backward, also with accumulation, gradient caching and shared
# towers), whose ranks also hash their weights after every step and must agree
# (dist.check_replicas_every); ZeRO-2 with one backward pass per step is bit for bit ZeRO-1 on as
# many ranks (the same sums, in rank order, and the same sharded gradient norm). Also: a checkpoint written by 3 ranks resumes on 2 and on 1
# (resharding ZeRO state, also from ZeRO-1 to ZeRO-2); killing one rank ends the job in bounded
# time, and --resume auto continues from the last checkpoint.
# LoRA towers (two adapters over one frozen base), overlapped and under ZeRO-1, follow their 1-rank
# run too. So does the bf16 optimizer state (optim.state_dtype = bf16) under ZeRO-1 and ZeRO-2,
# within a bf16 step's share of the towers (compare_runs.py), and its ZeRO-2 equals its ZeRO-1 bit
# for bit: each slice draws its stochastic rounding by the element's place in the whole buffer.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
sn_test_needs_command mpirun
sn_test_needs_python numpy safetensors
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
python3 "$SRC/tests/synth_data.py" data --examples 72 --test-queries 4
cat > cfg.json <<JSON
{"seed": 9, "threads": 1, "comm_timeout_s": 120,
 "data": {"train": ["data/train.jsonl"], "max_query_len": 12, "max_doc_len": 20},
 "stage1": {"model_desc": {"arch": "qwen2", "layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2,
                           "intermediate": 64, "vocab": 4096},
            "tokenizer": "$SRC/configs/default/decoder/tokenizer.json",
            "batch_queries": 12, "negatives_per_query": 1, "steps": 4, "optim": {"lr": 1e-3, "warmup_steps": 1}},
 "stage2": {"student_desc": {"arch": "bert", "layers": 1, "hidden": 16, "heads": 2, "intermediate": 32,
                             "vocab": 4096, "max_positions": 64},
            "tokenizer": "$SRC/configs/default/student/tokenizer.json",
            "batch_queries": 12, "steps": 3, "optim": {"lr": 1e-3, "warmup_steps": 1}}}
JSON
compare() { python3 "$SRC/tests/compare_runs.py" "$@"; }  # compare RUN_A RUN_B [WEIGHT_TOL]
fail=0
# Overlapped gradient all-reduce is on by default; tiny buckets make every layer its own bucket, also
# with gradient accumulation, gradient caching and shared towers (where only the last backward pass
# of a step may start the buckets).
SMALL="--set dist.bucket_mb=0.005"
ACCUM_CACHE="--set stage1.grad_accum=2 --set stage1.grad_cache_chunk=5 --set stage2.grad_accum=2"
ZERO2="--set dist.zero=2 --set dist.check_replicas_every=1"
BF16_STATE="--set stage1.optim.state_dtype=bf16 --set stage2.optim.state_dtype=bf16"
BF16_STATE_TOL=1e-3  # a few elements a bf16 step (2^-8 relative) apart, in a tower's norm
# Wider layers than the embedding table: the ranks' slice boundaries fall inside layers, so a
# layer's ZeRO-2 reduce-scatter has parts on two ranks.
WIDE='--set stage1.model_desc={"arch":"qwen2","layers":4,"hidden":32,"heads":4,"kv_heads":2,"intermediate":512,"vocab":4096}'
for variant in plain symmetric zero1 buckets accum-cache shared no-overlap zero2 zero2-accum-cache zero2-shared \
               zero1-wide zero2-wide lora lora-zero1 lora-zero2 bf16-zero1 bf16-zero2; do
  extra=""
  weight_tol=""
  case $variant in
    symmetric) extra="--set stage1.symmetric=true" ;;
    zero1) extra="--set dist.zero1=true --set dist.check_replicas_every=1" ;;
    buckets) extra="$SMALL" ;;
    accum-cache) extra="$SMALL $ACCUM_CACHE" ;;
    shared) extra="$SMALL --set stage1.shared_towers=true" ;;
    no-overlap) extra="--set dist.overlap=false" ;;
    # LoRA towers: the adapters' layer buckets overlap the backward like a tower's; ZeRO-1 over them
    lora) extra="$SMALL --set stage1.lora.rank=4 --set stage1.optim.lr=1e-2" ;;
    lora-zero1) extra="--set stage1.lora.rank=4 --set stage1.lora.targets=q,v,down --set dist.zero1=true --set dist.check_replicas_every=1" ;;
    zero2) extra="$ZERO2" ;;
    zero2-accum-cache) extra="$ZERO2 $ACCUM_CACHE" ;;
    zero2-shared) extra="$ZERO2 --set stage1.shared_towers=true" ;;
    zero1-wide) extra="--set dist.zero=1 --set dist.check_replicas_every=1 $WIDE" ;;
    zero2-wide) extra="$ZERO2 $WIDE" ;;
    lora-zero2) extra="--set stage1.lora.rank=4 --set stage1.lora.targets=q,v,down $ZERO2" ;;
    bf16-zero1) extra="$BF16_STATE --set dist.zero=1 --set dist.check_replicas_every=1" weight_tol=$BF16_STATE_TOL ;;
    bf16-zero2) extra="$BF16_STATE $ZERO2" weight_tol=$BF16_STATE_TOL ;;
  esac
  # shellcheck disable=SC2086
  "$BUILD/sn_train" --config cfg.json --set run_dir=np1-$variant $extra 2> np1.log || { cat np1.log; exit 1; }
  for np in 2 3; do
    timeout 600 mpirun --oversubscribe -np $np "$BUILD/sn_train" --config cfg.json --set run_dir=np$np-$variant $extra \
      2> np$np.log || { tail -20 np$np.log; exit 1; }
    grep -q "$np ranks (mpi)" np$np.log || { echo "FAIL: not $np MPI ranks"; head -3 np$np.log; fail=1; }
    if [ $variant = buckets ]; then  # every layer of both towers its own bucket, plus the rest
      grep -q "all-reduced in buckets during the backward pass" np$np.log &&
        grep -qE "stage 1: [4-9][0-9.]* overlapped all-reduces per step" np$np.log ||
        { echo "FAIL: buckets not overlapped: $(grep -E 'gradients:|overlapped' np$np.log)"; fail=1; }
    fi
    if [ $variant = lora ]; then  # the adapters' layers started their all-reduces during backward
      grep -qE "stage 1: [2-9][0-9.]* overlapped all-reduces per step" np$np.log ||
        { echo "FAIL: LoRA buckets not overlapped: $(grep -E 'overlapped' np$np.log)"; fail=1; }
    fi
    case $variant in zero*|lora-zero*|bf16-zero*)  # every rank hashed its weights after every step, and they agreed
      [ "$(grep -c '"weights_hash"' np$np-$variant/metrics.jsonl)" = "$(wc -l < np$np-$variant/metrics.jsonl)" ] ||
        { echo "FAIL: replica checksums missing from np$np-$variant/metrics.jsonl"; fail=1; } ;;
    esac
    if [ $variant = zero2 ] || [ $variant = zero2-wide ]; then
      # No full gradient buffer: each layer of both towers, the head and the tail summed on their own, to
      # ZeRO-1's bits (one backward pass a step). The replicated mode's norm is summed over the
      # whole buffer at once, so its clipping may differ in the last bit.
      layers=$([ $variant = zero2 ] && echo 2 || echo 4)
      grep -q "ZeRO-2: gradients and optimizer state sharded" np$np.log &&
        grep -qE "stage 1: $((2 * (layers + 2))).0 overlapped reduce-scatters per step" np$np.log ||
        { echo "FAIL: ZeRO-2 not layer by layer: $(grep -E 'gradients:|overlapped' np$np.log)"; fail=1; }
      zero1=np$np-zero1${variant#zero2}
      same=1
      for f in final/query_tower/model.safetensors final/doc_tower/model.safetensors final/student/model.safetensors; do
        cmp -s $zero1/$f np$np-$variant/$f || { echo "FAIL: $variant on $np ranks differs from $zero1 ($f)"; same=0; fail=1; }
      done
      [ $same = 0 ] || echo "ok: $variant on $np ranks equals $zero1 bit for bit"
    fi
    if [ $variant = bf16-zero2 ]; then
      for f in final/query_tower/model.safetensors final/doc_tower/model.safetensors final/student/model.safetensors; do
        cmp -s np$np-bf16-zero1/$f np$np-$variant/$f || { echo "FAIL: $variant on $np ranks differs from bf16-zero1 ($f)"; fail=1; }
      done
    fi
    # shellcheck disable=SC2086
    compare np1-$variant np$np-$variant $weight_tol || fail=1
  done
done

# Written by 3 ranks, resumed on 2 (and, with ZeRO's sharded optimizer state, resharded from 3
# ranks to 2 and to 1, also from ZeRO-1 shards into a ZeRO-2 run): the same run as on 1 rank.
# Each case: ranks resuming | ZeRO stage writing | ZeRO stage resuming | optimizer state dtype.
"$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=np1-stage1-fp32 2> /dev/null
"$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=np1-stage1-bf16 $BF16_STATE 2> /dev/null
for resume in "2|0|0|fp32" "2|1|1|fp32" "1|0|0|fp32" "2|2|2|fp32" "1|2|2|fp32" "2|1|2|fp32" "2|2|1|bf16"; do
  IFS='|' read -r np zw zr state <<<"$resume"
  run=resume-$np-zero$zw-$zr-$state
  dtype="--set stage1.optim.state_dtype=$state"
  timeout 300 mpirun --oversubscribe -np 3 "$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=$run \
    --set checkpoint.every=2 --stop-after 2 --set dist.zero=$zw $dtype 2> w3.log || { tail w3.log; exit 1; }
  [ $zw = 0 ] || ls $run/ckpt-1-2/state-rank00002.bin >/dev/null || { echo "FAIL: no per-rank shards"; fail=1; }
  timeout 300 mpirun --oversubscribe -np $np "$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=$run \
    --resume auto --set dist.zero=$zr $dtype 2> r.log || { tail r.log; exit 1; }
  grep -q "resume: stage 1, step 2" r.log || { echo "FAIL: $np ranks did not resume the 3-rank checkpoint"; fail=1; }
  # shellcheck disable=SC2046
  compare np1-stage1-$state $run $([ $state = bf16 ] && echo $BF16_STATE_TOL) || fail=1
done

# A token budget per rank batch (queries + documents): rank batches differ in size, the
# cross-device gathers take variable counts; every step stays within 2 ranks x the budget.
timeout 300 mpirun --oversubscribe -np 2 "$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=budget \
  --set stage1.max_tokens_per_rank=150 --set stage1.batch_queries=24 2> budget.log || { tail budget.log; exit 1; }
python3 - <<'PY' || fail=1
import json
rows = [json.loads(l) for l in open("budget/metrics.jsonl")]
assert rows and all(0 < r["tokens"] <= 2 * 150 for r in rows), [r["tokens"] for r in rows]
print("ok: token budget, tokens per step", [r["tokens"] for r in rows])
PY

# Stopped and resumed on the same 2 ranks: bit for bit the uninterrupted 2-rank run.
for zero in "" "--set dist.zero1=true" "--set dist.zero=2"; do
  rm -rf same && mkdir same
  # shellcheck disable=SC2086
  timeout 300 mpirun --oversubscribe -np 2 "$BUILD/sn_train" --config cfg.json --set run_dir=same/a $zero \
    --stop-after 3 2> s1.log || { tail s1.log; exit 1; }
  # shellcheck disable=SC2086
  timeout 300 mpirun --oversubscribe -np 2 "$BUILD/sn_train" --config cfg.json --set run_dir=same/a $zero \
    --resume auto 2> s2.log || { tail s2.log; exit 1; }
  # shellcheck disable=SC2086
  timeout 300 mpirun --oversubscribe -np 2 "$BUILD/sn_train" --config cfg.json --set run_dir=same/b $zero 2> s3.log
  for f in final/query_tower/model.safetensors final/doc_tower/model.safetensors final/student/model.safetensors; do
    cmp -s same/a/$f same/b/$f || { echo "FAIL: resumed 2-rank run differs ($f) ${zero}"; fail=1; }
  done
  echo "ok: 2 ranks stopped and resumed equal 2 ranks straight, bit for bit ${zero}"
done

# Kill rank 1 mid-run: the job must end, with an error, well within the collective timeout.
sed 's/"steps": 4,/"steps": 100000,/' cfg.json > long.json
start=$(date +%s)
mpirun --oversubscribe -np 2 "$BUILD/sn_train" --config long.json --stage 1 --set run_dir=killed \
  --set checkpoint.every=3 2> killed.log &
job=$!
for _ in $(seq 600); do
  [ -f killed/metrics.jsonl ] && [ "$(wc -l < killed/metrics.jsonl)" -ge 5 ] && break
  sleep 0.1
done
for p in $(pgrep -f "run_dir=killed"); do
  if tr '\0' '\n' < /proc/$p/environ 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1'; then kill -9 "$p"; fi
done
set +e; wait $job; rc=$?; set -e
took=$(( $(date +%s) - start ))
if [ $rc = 0 ] || [ $took -gt 60 ]; then echo "FAIL: killed job exit $rc after ${took}s"; tail -5 killed.log; fail=1
else echo "ok: one rank killed, the job ended with exit $rc after ${took}s"; fi
ls -d killed/ckpt-1-* >/dev/null 2>&1 || { echo "FAIL: no checkpoint before the kill"; fail=1; }
timeout 300 mpirun --oversubscribe -np 2 "$BUILD/sn_train" --config long.json --stage 1 --set run_dir=killed \
  --resume auto --stop-after 2 2> resumed.log || { tail resumed.log; fail=1; }
grep -q "resume: stage 1, step" resumed.log && echo "ok: $(grep -m1 'resume:' resumed.log)" ||
  { echo "FAIL: no resume after the kill"; fail=1; }
exit $fail
