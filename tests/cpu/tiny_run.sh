# Sourced by the run-folder and resume tests: a tiny two-stage run that takes about a second, and
# the comparison of two runs. Needs SRC (the project root) and the current folder for its files.
#
# tiny_run_setup STEPS1 STEPS2: training data in data/ and the config cfg.json (run_dir "run",
# a checkpoint after every step, the newest 3 kept, one thread so that runs compare bit for bit).
tiny_run_setup() {
  python3 "$SRC/tests/synth_data.py" data --examples 64 --test-queries 4 > /dev/null
  cat > cfg.json <<JSON
{"run_dir": "run", "seed": 5, "threads": 1,
 "data": {"train": ["data/train.jsonl"], "max_query_len": 8, "max_doc_len": 12, "doc_prompt": "{title} {text}"},
 "stage1": {"model_desc": {"arch": "qwen2", "layers": 1, "hidden": 16, "heads": 2, "kv_heads": 1,
                           "intermediate": 32, "vocab": 4096},
            "tokenizer": "$SRC/configs/default/decoder/tokenizer.json",
            "batch_queries": 4, "negatives_per_query": 1, "steps": $1, "optim": {"lr": 1e-3, "warmup_steps": 2}},
 "stage2": {"student_desc": {"arch": "bert", "layers": 1, "hidden": 16, "heads": 2, "intermediate": 32,
                             "vocab": 4096, "max_positions": 64},
            "tokenizer": "$SRC/configs/default/student/tokenizer.json",
            "batch_queries": 4, "steps": $2, "gamma": 0.5, "optim": {"lr": 1e-3, "warmup_steps": 2}},
 "checkpoint": {"every": 1, "keep": 3}}
JSON
}

# metrics.jsonl without what describes the process rather than the training (elapsed time, memory).
training_metrics() {
  python3 -c 'import json,sys
for l in open(sys.argv[1]):
    r=json.loads(l); r.pop("elapsed_s"); r.pop("mem_peak_gib"); print(json.dumps(r, sort_keys=True))' "$1"
}

# same_run A B WHAT: the final towers of run folders A and B byte for byte, and their metrics step
# for step; prints what differs and returns 1.
same_run() {
  local f rc=0
  for f in final/query_tower/model.safetensors final/doc_tower/model.safetensors final/student/model.safetensors; do
    [ ! -e "$1/$f" ] && [ ! -e "$2/$f" ] && continue
    cmp -s "$1/$f" "$2/$f" || { echo "FAIL: $3: $f differs between $1 and $2"; rc=1; }
  done
  diff <(training_metrics "$1/metrics.jsonl") <(training_metrics "$2/metrics.jsonl") > /dev/null ||
    { echo "FAIL: $3: metrics.jsonl differs between $1 and $2"; rc=1; }
  return $rc
}
