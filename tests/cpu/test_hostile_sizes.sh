#!/usr/bin/env bash
# Hostile sizes, numbers, strings and paths (issue 16): each case exits 2 before any work with a
# message naming the flag or config key, instead of overflowing a buffer size, allocating hundreds
# of GB, reading "3abc" as 3 or cutting a path.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
set +e  # each check records its failure and the test goes on
source "$SRC/tests/cpu/bad_input_setup.sh"
source "$SRC/tests/cpu/expect_exit2.sh"

# ---- sn_train: --set numbers are whole strings ----------------------------------------------
EXPECT_BIN=$BUILD/sn_train
for v in 3abc 0x10 '2 7' '' 1e400 -1 99999999999; do
  expect "--set stage1.steps='$v'" "'stage1.steps' must" --config base.json --print-config --set "stage1.steps=$v"
done
expect "--set lr=0.5xyz" "'stage1.optim.lr' must be a number" --config base.json --print-config \
  --set stage1.optim.lr=0.5xyz
expect "--set a bool 'truex'" "'stage1.symmetric' must be true or false" --config base.json --print-config \
  --set stage1.symmetric=truex
out=$("$EXPECT_BIN" --config base.json --print-config --set stage1.steps=7 2>&1)
grep -q '"steps":[[:space:]]*7' <<<"$out" || { echo "FAIL: --set stage1.steps=7 not applied"; fail=1; }

# ---- the config file: one JSON object, no NUL in strings, paths never cut -------------------
{ cat base.json; echo '{"seed": 7}'; } > trailing.json
expect "text after the config's object" "trailing.json: line" --config trailing.json --print-config
printf '{"run_dir": "run"} x' > trailing2.json
expect "a stray word after the object" "text after the JSON object" --config trailing2.json --print-config
printf '{"run_dir": "run\\u0000/elsewhere"}' > nul.json
expect "\\u0000 in a string of the file" "nul.json: 'run_dir': a string holds \\u0000" --config nul.json --print-config
printf '{"stage1": {"lora": {"targets": ["q\\u0000", "k"]}}}' > nul2.json
expect "\\u0000 in a list item" "'stage1.lora.targets': a string holds" --config nul2.json --print-config
expect "\\u0000 in a --set value" "'data.query_prompt': a string holds" --config base.json --print-config \
  --set 'data.query_prompt="Q \u0000 {text}"'
LONG=data/$(printf 'x%.0s' $(seq 1 1026)).jsonl
expect "a data.train path longer than its buffer" "'data.train' is too long" --config base.json --print-config \
  --set "data.train=$LONG"
expect "a long path inside the config's list" "'data.train' is too long" --config base.json --print-config \
  --set "data.train=[\"data/train.jsonl\", \"$LONG\"]"

# ---- path keys name what they must: file or folder ------------------------------------------
expect "data.train naming a folder" "data.train: '" --config base.json --set data.train=data
expect "... says which kind" "is a folder, expected a file" --config base.json --set data.train=data
expect "eval.data naming a file" "eval.data: 'base.json' is a file, expected a folder" --config base.json \
  --set eval.data=base.json
expect "stage1.model naming a file" "stage1.model: 'base.json' is a file, expected a folder" --config base.json \
  --set stage1.model_desc= --set stage1.model=base.json
expect "stage1.model_desc naming a folder" "stage1.model_desc: 'data' is a folder" --config base.json \
  --set stage1.model_desc=data
expect "run_dir naming a file" "run_dir: 'base.json' is a file, expected a folder" --config base.json \
  --set run_dir=base.json

# ---- sizes: products that overflow an int, lengths beyond the positions, memory -------------
expect "eval.batch x data.max_doc_len overflowing an int (issue 16)" \
  "'eval.batch' x 'data.max_doc_len' (4100 x 1047553 tokens) is more than 2147483647" \
  --config base.json --set eval.batch=4100 --set data.max_doc_len=1047553
expect "data.max_doc_len beyond the stage-1 model's positions, before training" \
  "data.max_doc_len 1047553 is more than the 512 positions of the stage-1 model (stage1.model_desc)" \
  --config base.json --set data.max_doc_len=1047553
expect "data.max_query_len beyond the student's positions" \
  "data.max_query_len 600 is more than the 512 positions of the student (stage2.student_desc)" --config base.json \
  --set data.max_query_len=600 --set data.max_doc_len=500 \
  --set 'stage1.model_desc={"arch": "qwen2", "layers": 1, "hidden": 16, "heads": 2, "vocab": 4096, "max_positions": 1024}'
expect "stage-1 documents x length overflowing an int" "'stage1.batch_queries' x ('stage1.negatives_per_query' + 1)" \
  --config base.json --set stage1.batch_queries=100000 --set stage1.negatives_per_query=1000 --print-config

# ---- numeric flags of the programs ------------------------------------------------------------
expect "sn_train --stop-after 3abc" "--stop-after: expected a whole decimal integer" --config base.json --stop-after 3abc
expect "sn_train --stop-after 0x10" "--stop-after" --config base.json --stop-after 0x10
expect "sn_train --memory 1e400" "--memory: expected a decimal number" --config base.json --plan --memory 1e400
expect "sn_train --memory 0x10" "--memory" --config base.json --plan --memory 0x10

# sn_eval: a small BERT (128 positions) and a RoPE tower whose config claims 2^24 positions.
mkdir -p bert rope
cp "$SRC/tests/fixtures/bert/config.json" "$SRC/tests/fixtures/bert/model.safetensors" bert/
cp "$SRC/configs/default/student/tokenizer.json" bert/
cp "$SRC/tests/fixtures/qwen2/model.safetensors" rope/
cp "$SRC/configs/default/decoder/tokenizer.json" rope/
python3 - "$SRC/tests/fixtures/qwen2/config.json" rope/config.json <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["max_position_embeddings"] = 1 << 24
json.dump(c, open(sys.argv[2], "w"))
PY
EXPECT_BIN=$BUILD/sn_eval
EV=(--data data/test)
for v in 3abc 0x10 '2 7' '' 0 -5 99999999999 ' 5'; do
  expect "sn_eval --batch '$v'" "--batch: expected a whole decimal integer in [1, " --query-model bert --doc-model bert \
    "${EV[@]}" --batch "$v"
done
expect "sn_eval --data naming a file" "--data: 'base.json' is a file, expected a folder" --query-model bert \
  --doc-model bert --data base.json
expect "sn_eval --query-model naming a file" "--query-model: 'base.json' is a file, expected a folder" \
  --query-model base.json --doc-model bert "${EV[@]}"
expect "sn_eval --qrels naming a folder" "--qrels: 'data' is a folder, expected a file" --run base.json --qrels data
expect "sn_eval --k 1.5" "--k: expected a whole decimal integer" --query-model bert --doc-model bert "${EV[@]}" --k 1.5
expect "the issue's --batch 5 --max-doc-len 858993460" "--max-doc-len 858993460 is more than the 128 positions of the document tower" \
  --query-model bert --doc-model bert "${EV[@]}" --batch 5 --max-doc-len 858993460
expect "--max-doc-len 999999999 names the limit" "use at most 128" --query-model bert --doc-model bert "${EV[@]}" \
  --max-doc-len 999999999
expect "--max-query-len beyond the positions" "--max-query-len 129 is more than the 128 positions of the query tower" \
  --query-model bert --doc-model bert "${EV[@]}" --max-query-len 129
expect "--max-doc-len beyond a RoPE tower's max_position_embeddings" "use at most 16777216" \
  --query-model rope --doc-model rope "${EV[@]}" --max-doc-len 999999999
expect "--batch x --max-doc-len overflowing an int" "--batch x --max-doc-len (200 x 16777216) is more than 2147483647" \
  --query-model rope --doc-model rope "${EV[@]}" --batch 200 --max-doc-len 16777216
expect "an encode batch larger than free memory" "GiB free: lower --batch or --max-doc-len" \
  --query-model rope --doc-model rope "${EV[@]}" --batch 100 --max-query-len 16 --max-doc-len 16000000

# sn_embed and sn_make_dataset flags
EXPECT_BIN=$BUILD/sn_embed
expect "sn_embed --batch 3abc" "--batch: expected a whole decimal integer" --model bert --input x --out y.npy --batch 3abc
expect "sn_embed --threads 0x10" "--threads: expected a whole decimal integer" --model bert --input x --out y.npy --threads 0x10
expect "sn_embed --input naming a folder" "--input: 'data' is a folder, expected a file" --model bert --input data \
  --out y.npy
echo '{"text": "hello"}' > in.jsonl
expect "sn_embed --max-len beyond the positions" "--max-len 129 is more than the model's 128 positions" \
  --model bert --input in.jsonl --out y.npy --max-len 129
EXPECT_BIN=$BUILD/sn_tokenize
expect "sn_tokenize --input naming a folder" "--input: 'data' is a folder, expected a file" --tokenizer "$TOK" --input data
EXPECT_BIN=$BUILD/sn_make_dataset
expect "sn_make_dataset --seed 1.5" "--seed: expected a whole decimal integer" --out ds --seed 1.5
exit $fail
