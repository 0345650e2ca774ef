# Sourced by the sn_mine tests (in an empty work folder, with BUILD and SRC set): synthetic training
# lines (data/train.jsonl), a corpus of every document they name plus a copy of line 1's positive
# under another id ("dup", untitled: its text is the positive's title + " " + text) and some
# unrelated records, and a pair of tiny dense towers with tokenizers from one training step (run/).
python3 "$SRC/tests/synth_data.py" data --examples 40 --test-queries 2 > /dev/null
python3 - <<'PY'
import json
docs, seen = [], set()
for line in open("data/train.jsonl"):
    ex = json.loads(line)
    for d in ex["pos"] + ex.get("neg", []):
        key = (d.get("title", ""), d["text"]) if isinstance(d, dict) else ("", d)
        if key not in seen:
            seen.add(key)
            docs.append(key)
with open("corpus.jsonl", "w") as f:
    for i, (t, x) in enumerate(docs):
        f.write(json.dumps({"_id": f"c{i}", "title": t, "text": x}) + "\n")
    first = json.loads(open("data/train.jsonl").readline())["pos"][0]
    t, x = (first.get("title", ""), first["text"]) if isinstance(first, dict) else ("", first)
    f.write(json.dumps({"_id": "dup", "title": "", "text": f"{t} {x}" if t else x}) + "\n")
    for line in open("data/test/corpus.jsonl"):
        r = json.loads(line)
        f.write(json.dumps({"_id": "extra-" + r["_id"], "title": r.get("title", ""), "text": r["text"]}) + "\n")
PY
"$BUILD/sn_train" --set run_dir=run --set 'data.train=["data/train.jsonl"]' \
  --set 'stage1.model_desc={"arch": "qwen2", "layers": 1, "hidden": 16, "heads": 2, "kv_heads": 1, "vocab": 4096}' \
  --set "stage1.tokenizer=$SRC/configs/default/decoder/tokenizer.json" --set stage1.batch_queries=4 \
  --set stage1.steps=1 --stage 1 2> train.log || { cat train.log; exit 1; }
DENSE="--query-model run/final/query_tower --doc-model run/final/doc_tower"
