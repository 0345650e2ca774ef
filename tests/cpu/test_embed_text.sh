#!/usr/bin/env bash
# sn_embed with {"text": ...} lines: tokenized with the model folder's tokenizer as training does
# (EOS appended for decoders), it must equal sn_embed of the same ids given as input_ids; a text line
# against a folder without a tokenizer is a clear error.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
sn_test_needs_python numpy
python3 "$SRC/tests/synth_data.py" data --examples 16 --test-queries 2
# A tower folder with its tokenizer: one training step writes it.
"$BUILD/sn_train" --set run_dir=run --set 'data.train=["data/train.jsonl"]' \
  --set 'stage1.model_desc={"arch": "qwen2", "layers": 1, "hidden": 16, "heads": 2, "kv_heads": 1, "vocab": 4096}' \
  --set "stage1.tokenizer=$SRC/configs/default/decoder/tokenizer.json" --set stage1.batch_queries=4 \
  --set stage1.steps=1 --stage 1 2> train.log || { cat train.log; exit 1; }
TOWER=run/final/query_tower
printf '%s\n' '{"text": "apple river stone"}' '{"text": "héllo wörld, ünïcode — 123", "title": "t"}' \
  '{"text": "x"}' > text.jsonl
"$BUILD/sn_embed" --model $TOWER --input text.jsonl --out text.npy --prompt "{title} {text}" 2> embed.log || { cat embed.log; exit 1; }
# The same ids by hand: the rendered prompt, the tokenizer's ids, EOS (<|endoftext|>, id 0) appended.
python3 - > rendered.txt <<'PY'
for title, text in (("", "apple river stone"), ("t", "héllo wörld, ünïcode — 123"), ("", "x")):
    print(f"{title} {text}")
PY
# (--no-special: the export's tokenizer appends EOS itself, as AutoTokenizer does; it is added below)
"$BUILD/sn_tokenize" --tokenizer $TOWER --no-special --input rendered.txt > ids.txt
python3 - <<'PY' > ids.jsonl
import json
for line in open("ids.txt"):
    print(json.dumps({"input_ids": json.loads(line) + [0]}))
PY
"$BUILD/sn_embed" --model $TOWER --input ids.jsonl --out ids.npy 2>> embed.log
python3 -c "
import numpy as np
a, b = np.load('text.npy'), np.load('ids.npy')
assert a.shape == b.shape == (3, 16), (a.shape, b.shape)
assert np.array_equal(a, b), np.abs(a - b).max()
print('text and input_ids embeddings are identical', a.shape)"
# A folder without a tokenizer: exit 2 naming the line.
mkdir bare && cp $TOWER/config.json $TOWER/model.safetensors bare/
set +e
"$BUILD/sn_embed" --model bare --input text.jsonl --out x.npy 2> err.txt; rc=$?
set -e
[ $rc = 2 ] && grep -q "text.jsonl:1" err.txt && grep -q "tokenizer" err.txt || { echo "FAIL: rc $rc: $(cat err.txt)"; exit 1; }
echo "ok: $(head -1 err.txt)"
