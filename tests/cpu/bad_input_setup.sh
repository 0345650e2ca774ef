# Sourced by the bad-input tests (test_train_bad_input.sh, test_hostile_sizes.sh): in the current
# folder, a tiny training set (data/) and base.json, a valid two-stage config on it that each case
# then breaks in one place. Needs SRC (the project root).
python3 "$SRC/tests/synth_data.py" data --examples 16 --test-queries 4 >/dev/null
TOK=$SRC/configs/default/decoder/tokenizer.json
DESC='{"arch": "qwen2", "layers": 1, "hidden": 16, "heads": 2, "kv_heads": 1, "intermediate": 32, "vocab": 4096}'
cat > base.json <<JSON
{"run_dir": "run", "data": {"train": ["data/train.jsonl"], "max_query_len": 12, "max_doc_len": 24},
 "stage1": {"model_desc": $DESC, "tokenizer": "$TOK", "batch_queries": 4, "steps": 1},
 "stage2": {"student_desc": {"arch": "bert", "layers": 1, "hidden": 16, "heads": 2, "vocab": 4096},
            "tokenizer": "$SRC/configs/default/student/tokenizer.json", "steps": 1, "batch_queries": 4}}
JSON
