#!/usr/bin/env bash
# Data-parallel stage 1 on several GPUs of one host: equivalence with 1 GPU, replica checksums,
# scaling efficiency, the all-reduce time hidden behind backward, collective bandwidth, and a rank
# killed mid-run then resumed.
#
# usage: benchmarks/multi_gpu.sh BUILD_DIR OUT_DIR
#   NPS="2 4 8"  world sizes to run (default: 2, 4, 8 up to the GPUs present)
#   DEVICE=cuda  (cpu: a dry run of the same logic over MPI, with TINY=1 for a small model)
#   PARTS="comm eq tp kill"   which measurements to make (all by default)
#   BQ=64 QLEN=32 DLEN=128   queries per GPU, query and document lengths (1 hard negative each,
#                            so 2 x BQ documents per GPU); STEPS=30 timed steps, EQ_STEPS=10
#
# Runs, for each N (same per-GPU batch for throughput, same global batch for equivalence):
#   ref-N      1 GPU, global batch N x BQ                   (the equivalence reference)
#   eq-N       N GPUs, global batch N x BQ, replica checksum after every step
#   eqz-N      the same with ZeRO-1; eqz2-N with ZeRO-2
#   tp-N / tpz-N / tpz2-N / tpno-N   N GPUs timed: overlapped all-reduce / ZeRO-1 / ZeRO-2 / no overlap
#   kill-N     ZeRO-1 with checkpoints, rank 1 killed mid-run, then --resume auto on N GPUs
# and tp-1 (1 GPU, BQ queries: the throughput baseline). Writes OUT_DIR/multi_gpu.txt (summary),
# multi_gpu.json, comm-N.txt (sn_bench_comm) and the runs' metrics.
set -uo pipefail
BUILD=$(cd "$1" && pwd)
OUT=$(mkdir -p "$2" && cd "$2" && pwd)
SRC=$(cd "$(dirname "$0")/.." && pwd)
DEVICE=${DEVICE:-cuda}
PARTS=" ${PARTS:-comm eq tp kill} "
part() { [[ $PARTS == *" $1 "* ]]; }
BQ=${BQ:-64} QLEN=${QLEN:-32} DLEN=${DLEN:-128} STEPS=${STEPS:-30} EQ_STEPS=${EQ_STEPS:-10}
KILL_CKPT_EVERY=${KILL_CKPT_EVERY:-10}
KILL_AFTER_STEP=$((KILL_CKPT_EVERY + KILL_CKPT_EVERY / 2))
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# NVLink multicast stays off on the shared hosts (KINDS.md).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
MPIRUN="mpirun --bind-to none -x NCCL_NVLS_ENABLE -x OMP_NUM_THREADS"
if [ "$DEVICE" = cpu ]; then
  MPIRUN="$MPIRUN --oversubscribe"
  export OMP_NUM_THREADS=1
  GPUS=${GPUS:-2}
else
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
  GPUS=$(nvidia-smi -L | grep -c GPU)
fi
if [ -z "${NPS:-}" ]; then
  NPS=""
  for n in 2 4 8; do [ "$n" -le "$GPUS" ] && NPS="$NPS $n"; done
fi
[ -n "$NPS" ] || { echo "multi_gpu.sh: needs at least 2 GPUs ($GPUS found)"; exit 1; }
SUMMARY=$OUT/multi_gpu.txt
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee -a "$SUMMARY"
  nvidia-smi topo -m 2>&1 | tee -a "$SUMMARY"
  nvidia-smi nvlink -s -i 0 2>&1 | head -4 | tee -a "$SUMMARY"
fi

# Texts long enough that every query is cut to QLEN tokens and every document to DLEN.
python3 "$SRC/tests/synth_data.py" data --examples 8192 --test-queries 8 --query-words 40 --doc-words 160 >/dev/null
MODEL_DESC=\"$SRC/configs/models/qwen2.5-0.5b.json\"
[ -n "${TINY:-}" ] && MODEL_DESC='{"arch": "qwen2", "layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 128, "vocab": 151936}'
cat > cfg.json <<JSON
{"device": "$DEVICE", "seed": 1, "comm_timeout_s": 120,
 "data": {"train": ["data/train.jsonl"], "query_prompt": "{text}", "doc_prompt": "{text}",
          "max_query_len": $QLEN, "max_doc_len": $DLEN},
 "stage1": {"model_desc": $MODEL_DESC,
            "tokenizer": "$SRC/configs/default/decoder/tokenizer.json",
            "batch_queries": $BQ, "negatives_per_query": 1, "steps": $STEPS,
            "optim": {"lr": 1e-5, "warmup_steps": 2}},
 "checkpoint": {"keep": 1},
 "log": {"every": 5}}
JSON

# run NAME NP [--set ...]: stage 1 into run dir NAME; the log in NAME.log.
run() {
  local name=$1 np=$2; shift 2
  local start=$SECONDS rc
  local launch="timeout 900 $MPIRUN -np $np"
  [ "$np" = 1 ] && launch="env CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}"
  # Each log line stamped with the wall clock, to see where a run's time goes.
  $launch "$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=$name "$@" 2>&1 |
    while IFS= read -r line; do echo "${EPOCHREALTIME} $line"; done > $name.log
  rc=${PIPESTATUS[0]}
  cp $name/metrics.jsonl "$OUT/$name.metrics.jsonl" 2>/dev/null; cp $name.log "$OUT/$name.log"
  echo "run $name (np $np $*): exit $rc, $((SECONDS - start)) s" | tee -a "$SUMMARY"
  [ $rc = 0 ] || tail -15 $name.log | tee -a "$SUMMARY"
  rm -rf $name/final $name/ckpt-*  # weights are compared through metrics and checksums
  return $rc
}

part tp && run tp-1 1
for n in $NPS; do
  gb=$((n * BQ))
  say "== $n GPUs"
  if [ "$DEVICE" = cuda ] && part comm; then
    $MPIRUN -np "$n" "$BUILD/sn_bench_comm" --device cuda --dtype bf16 --min-bytes 1M --max-bytes 2G \
      --iters 20 --warmup 5 > "$OUT/comm-$n.txt" 2>&1
    echo "sn_bench_comm np $n: exit $?" | tee -a "$SUMMARY"
    tail -30 "$OUT/comm-$n.txt" >> "$SUMMARY"
  fi
  if part eq; then
    ref_extra=""
    [ "$n" -gt 2 ] && ref_extra="--set stage1.grad_cache_chunk=$((2 * BQ))"  # the global batch on one GPU
    # shellcheck disable=SC2086
    run ref-$n 1 --set stage1.batch_queries=$gb --set stage1.steps=$EQ_STEPS $ref_extra
    run eq-$n "$n" --set stage1.batch_queries=$gb --set stage1.steps=$EQ_STEPS --set dist.check_replicas_every=1
    run eqz-$n "$n" --set stage1.batch_queries=$gb --set stage1.steps=$EQ_STEPS --set dist.check_replicas_every=1 \
      --set dist.zero=1
    run eqz2-$n "$n" --set stage1.batch_queries=$gb --set stage1.steps=$EQ_STEPS --set dist.check_replicas_every=1 \
      --set dist.zero=2
  fi
  if part tp || part kill; then  # tpz-n is also the kill test's uninterrupted run
    part tp && run tp-$n "$n" --set stage1.batch_queries=$gb
    part tp && run tpno-$n "$n" --set stage1.batch_queries=$gb --set dist.overlap=false
    part tp && run tpz2-$n "$n" --set stage1.batch_queries=$gb --set dist.zero=2
    run tpz-$n "$n" --set stage1.batch_queries=$gb --set dist.zero1=true
  fi
  part kill || continue

  # Kill rank 1 after step KILL_AFTER_STEP (a checkpoint was written at KILL_CKPT_EVERY); the job must
  # end with an error well within the collective timeout; --resume auto on n GPUs continues, and the
  # resumed steps must equal the uninterrupted ZeRO-1 run (tpz-n) step for step.
  name=kill-$n
  start=$(date +%s.%N)
  $MPIRUN -np "$n" "$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=$name --set stage1.batch_queries=$gb \
    --set dist.zero1=true --set checkpoint.every=$KILL_CKPT_EVERY > $name.log 2>&1 &
  job=$!
  for _ in $(seq 6000); do
    [ -f $name/metrics.jsonl ] && [ "$(wc -l < $name/metrics.jsonl)" -ge $KILL_AFTER_STEP ] && break
    kill -0 $job 2>/dev/null || break
    sleep 0.1
  done
  killed_at=$(wc -l < $name/metrics.jsonl 2>/dev/null || echo 0)
  kill_time=$(date +%s.%N)
  for p in $(pgrep -f "run_dir=$name"); do
    if tr '\0' '\n' < /proc/$p/environ 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1'; then kill -9 "$p"; fi
  done
  wait $job; rc=$?
  end=$(date +%s.%N)
  say "kill-$n: rank 1 killed after step $killed_at; the job ended $(python3 -c "print(f'{$end - $kill_time:.1f}')") s later with exit $rc"
  grep -iE "error|noticed|fatal|timeout|killed" $name.log | head -5 | tee -a "$SUMMARY"
  cp $name.log "$OUT/$name.log"
  cp $name/metrics.jsonl "$OUT/$name.before.metrics.jsonl" 2>/dev/null
  run $name "$n" --set stage1.batch_queries=$gb --set dist.zero1=true --set checkpoint.every=$KILL_CKPT_EVERY --resume auto
  grep -m1 "resume:" $name.log | tee -a "$SUMMARY"
  cp $name.log "$OUT/$name.resume.log"
done

python3 - "$OUT" "$SRC" "$BQ" "$QLEN" "$DLEN" "$NPS" "$KILL_CKPT_EVERY" <<'PY' | tee -a "$SUMMARY"
import json, os, sys
out, src, BQ, QLEN, DLEN, nps, kill_every = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]), sys.argv[6].split(), int(sys.argv[7])
def rows(name):
    p = f"{out}/{name}.metrics.jsonl"
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []
def rate(name, warm=5):
    r = rows(name)
    if len(r) <= warm + 1: return None
    w, last = r[warm - 1], r[-1]
    toks = sum(x["tokens"] for x in r[warm:])
    secs = last["elapsed_s"] - w["elapsed_s"]
    return dict(step_s=secs / (len(r) - warm), tok_s=toks / secs)
BF16_REL = 1e-2
res = {"per_gpu_batch": f"{BQ} queries x {QLEN} + {2 * BQ} documents x {DLEN}", "runs": {}}
base = rate("tp-1")
if base: print(f"1 GPU: {base['step_s'] * 1e3:.1f} ms/step, {base['tok_s']:.0f} tokens/s")
res["runs"]["tp-1"] = base
for n in map(int, nps):
    print(f"-- {n} GPUs")
    ref = rows(f"ref-{n}")
    for eq in (f"eq-{n}", f"eqz-{n}", f"eqz2-{n}"):
        r = rows(eq)
        if not r and not ref: continue
        if not r or len(r) != len(ref):
            print(f"{eq}: FAIL: {len(r)} steps vs {len(ref)} for the 1-GPU reference"); continue
        rel = [abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(r, ref)]
        hashes = sum(1 for x in r if "weights_hash" in x)
        ok = max(rel) <= BF16_REL and hashes == len(r)
        print(f"{eq}: {'ok' if ok else 'FAIL'}: loss vs 1 GPU on the same global batch, max rel diff "
              f"{max(rel):.2e} over {len(r)} steps (bf16 band {BF16_REL:g}); replica checksums equal on all "
              f"{n} ranks after {hashes}/{len(r)} steps")
        res["runs"][eq] = dict(max_rel_loss_diff=max(rel), steps=len(r), checked_steps=hashes, ok=ok)
    rates = {k: rate(f"{k}-{n}") for k in ("tp", "tpno", "tpz", "tpz2")}
    for k, v in rates.items():
        if not v or not base: continue
        eff = v["tok_s"] / (n * base["tok_s"])
        label = {"tp": "overlapped all-reduce", "tpno": "all-reduce after backward", "tpz": "ZeRO-1",
                 "tpz2": "ZeRO-2"}[k]
        print(f"{k}-{n} ({label}): {v['step_s'] * 1e3:.1f} ms/step, {v['tok_s']:.0f} tokens/s, "
              f"scaling efficiency {eff:.3f}")
        res["runs"][f"{k}-{n}"] = dict(v, efficiency=eff)
    if rates["tp"] and rates["tpno"] and base:
        hidden = rates["tpno"]["step_s"] - rates["tp"]["step_s"]
        exposed_no = rates["tpno"]["step_s"] - base["step_s"]
        print(f"all-reduce hidden behind backward: {hidden * 1e3:.1f} ms/step of the {exposed_no * 1e3:.1f} ms "
              f"that communication adds without overlap ({hidden / exposed_no:.0%} hidden)" if exposed_no > 0 else
              f"all-reduce hidden: {hidden * 1e3:.1f} ms/step")
        res["runs"][f"overlap-{n}"] = dict(hidden_s=hidden, exposed_without_overlap_s=exposed_no)
    z, k = rows(f"tpz-{n}"), rows(f"kill-{n}")
    resumed = [x for x in k if x["step"] > kill_every]
    if z and resumed:
        same = [x for x in resumed if x["step"] <= len(z) and x["loss"] == z[x["step"] - 1]["loss"]]
        maxd = max(abs(x["loss"] - z[x["step"] - 1]["loss"]) for x in resumed)
        ok = len(same) == len(resumed) and resumed[-1]["step"] == len(z)
        print(f"kill-{n}: {'ok' if ok else 'FAIL'}: resumed from step {kill_every}, {len(same)}/{len(resumed)} "
              f"steps with the uninterrupted run's loss bit for bit (max diff {maxd:.3g})")
        res["runs"][f"kill-{n}"] = dict(resumed_steps=len(resumed), equal_steps=len(same), max_diff=maxd, ok=ok)
json.dump(res, open(f"{out}/multi_gpu.json", "w"), indent=1)
PY
