# Sourced by the encoder library's tests: make_encoder_towers HIDDEN trains, in the current folder,
# a tiny run of both stages (run/final/query_tower: Qwen2, last token, a "Query: {text}" prompt;
# run/final/student: BERT, CLS, projected to the teacher's width) and writes texts.jsonl, queries
# of every length (one longer than max_query_len, cut as training cuts it), unicode, one character.
# Needs BUILD and SRC set.
make_encoder_towers() {
  local hidden=$1
  python3 "$SRC/tests/synth_data.py" data --examples 32 --test-queries 2 > /dev/null
  cat > cfg.json <<JSON
{"run_dir": "run", "data": {"train": ["data/train.jsonl"], "query_prompt": "Query: {text}",
                            "max_query_len": 16, "max_doc_len": 24},
 "stage1": {"model_desc": {"arch": "qwen2", "layers": 2, "hidden": $((2 * hidden)), "heads": 4, "kv_heads": 2,
                           "intermediate": $((4 * hidden)), "vocab": 4096},
            "tokenizer": "$SRC/configs/default/decoder/tokenizer.json", "pooling": "last", "batch_queries": 8,
            "steps": 2},
 "stage2": {"student_desc": {"arch": "bert", "layers": 2, "hidden": $hidden, "heads": 2,
                             "intermediate": $((2 * hidden)), "vocab": 4096, "max_positions": 64},
            "tokenizer": "$SRC/configs/default/student/tokenizer.json", "pooling": "cls", "batch_queries": 8,
            "steps": 2}}
JSON
  "$BUILD/sn_train" --config cfg.json 2> train.log || { cat train.log; return 1; }
  python3 - > texts.jsonl <<'PY'
import json
texts = ["apple river stone", "x", "héllo wörld, ünïcode — 123", "what is the bridge under the water made of",
         "a long query " + " ".join(f"word{i}" for i in range(40)), " 500 B", "tab\there",
         "one more query about rivers", "and another", "the last one here"]
for t in texts: print(json.dumps({"text": t}))
PY
}
