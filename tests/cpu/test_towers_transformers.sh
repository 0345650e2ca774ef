#!/usr/bin/env bash
# The final towers sn_train writes are Hugging Face folders that transformers loads unchanged, and
# transformers computes the same embeddings from them as sn_embed (fp32, relative 1e-4): the two
# Qwen2 towers (last-token pooling) and the BERT student (CLS pooling, then the projection).
# Needs torch + transformers (the GPU machine has them); skips otherwise.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
sn_test_needs_python torch transformers numpy safetensors
python3 "$SRC/tests/synth_data.py" data --examples 32 --test-queries 2
cat > cfg.json <<JSON
{"run_dir": "run", "data": {"train": ["data/train.jsonl"], "max_query_len": 16, "max_doc_len": 24},
 "stage1": {"model_desc": {"arch": "qwen2", "layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2,
                           "intermediate": 64, "vocab": 4096},
            "tokenizer": "$SRC/configs/default/decoder/tokenizer.json", "batch_queries": 8, "steps": 2},
 "stage2": {"student_desc": {"arch": "bert", "layers": 2, "hidden": 16, "heads": 2, "intermediate": 32,
                             "vocab": 4096, "max_positions": 64},
            "tokenizer": "$SRC/configs/default/student/tokenizer.json", "batch_queries": 8, "steps": 2}}
JSON
"$BUILD/sn_train" --config cfg.json 2> train.log || { cat train.log; exit 1; }
printf '%s\n' '{"text": "apple river stone under the bridge"}' '{"text": "x"}' \
  '{"text": "Debian package for the quick brown fox, version 1.2"}' > texts.jsonl
for tower in query_tower doc_tower student; do
  # --prompt: the bare texts (without it sn_embed applies the prompt the tower was trained with)
  "$BUILD/sn_embed" --model run/final/$tower --input texts.jsonl --out $tower.npy --prompt "{text}" 2>> embed.log
done
python3 - <<'PY'
import json, os, numpy as np, torch
from safetensors.numpy import load_file
from transformers import AutoModel
from tokenizers import Tokenizer
texts = [json.loads(l)["text"] for l in open("texts.jsonl")]
def check(tower, pool):
    d = f"run/final/{tower}"
    model = AutoModel.from_pretrained(d, dtype=torch.float32).eval()
    tok = Tokenizer.from_file(f"{d}/tokenizer.json")
    rows = []
    for t in texts:
        ids = tok.encode(t).ids
        if pool == "last":  # the export's post-processor appends EOS, as training does
            assert ids[-1] == tok.token_to_id("<|endoftext|>"), ids
        with torch.no_grad():
            h = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        v = (h[-1] if pool == "last" else h[0]).double().numpy()
        if os.path.exists(f"{d}/2_Dense"):  # the projection, as sentence-transformers' Dense
            w = load_file(f"{d}/2_Dense/model.safetensors")
            v = w["linear.weight"].astype(np.float64) @ v + w["linear.bias"]
        rows.append(v / np.linalg.norm(v))
    ref = np.stack(rows)
    ours = np.load(f"{tower}.npy").astype(np.float64)
    err = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    print(f"{tower}: {type(model).__name__} loaded; sn_embed vs transformers rel err {err:.2e}")
    assert err < 1e-4, err
check("query_tower", "last"); check("doc_tower", "last"); check("student", "cls")
PY
