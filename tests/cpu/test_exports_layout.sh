#!/usr/bin/env bash
# What the exported towers hold and what sn reads back from them (no torch needed; the Python side
# is test_exports_python.sh):
# - sentence-transformers files: modules.json (Transformer, Pooling, Dense for the student,
#   Normalize), the pooling mode as trained, the prompts and max_seq_length; the student's
#   projection in 2_Dense and not in model.safetensors, a zero pooler placeholder; decoders'
#   tokenizer.json appends EOS, tokenizer_config.json names PreTrainedTokenizerFast;
# - an older export (projection.* inside model.safetensors, no side files) still loads and embeds
#   the same;
# - sn_embed and sn_eval without flags equal the same runs with the trained prompt, pooling and
#   lengths given as flags;
# - a Hub-style model name exits 2 saying how to download it.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
sn_test_needs_python numpy safetensors
python3 "$SRC/tests/synth_data.py" data --examples 32 --test-queries 4 > /dev/null
cat > cfg.json <<JSON
{"run_dir": "run", "data": {"train": ["data/train.jsonl"], "query_prompt": "Query: {text}",
                            "doc_prompt": "Title: {title}\nText: {text}", "max_query_len": 12, "max_doc_len": 20},
 "stage1": {"model_desc": {"arch": "qwen2", "layers": 1, "hidden": 16, "heads": 2, "kv_heads": 1,
                           "intermediate": 32, "vocab": 4096},
            "tokenizer": "$SRC/configs/default/decoder/tokenizer.json", "pooling": "mean", "batch_queries": 8, "steps": 1},
 "stage2": {"student_desc": {"arch": "bert", "layers": 1, "hidden": 8, "heads": 2, "intermediate": 16,
                             "vocab": 4096, "max_positions": 64},
            "tokenizer": "$SRC/configs/default/student/tokenizer.json", "pooling": "cls", "batch_queries": 8, "steps": 1}}
JSON
"$BUILD/sn_train" --config cfg.json 2> train.log || { cat train.log; exit 1; }
python3 - <<'PY'
import json, os
from safetensors.numpy import load_file
def side(d, name): return json.load(open(os.path.join(d, name)))
for tower, role, pool, max_len, n_modules in (("query_tower", "query", "mean", 12, 3), ("doc_tower", "document", "mean", 20, 3),
                                              ("student", "query", "cls", 12, 4)):
    d = f"run/final/{tower}"
    types = [m["type"] for m in side(d, "modules.json")]
    assert len(types) == n_modules and types[0].endswith("Transformer") and types[1].endswith("Pooling") \
        and types[-1].endswith("Normalize"), (d, types)
    p = side(d, "1_Pooling/config.json")
    on = [k for k, v in p.items() if k.startswith("pooling_mode") and v]
    assert on == [{"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}[pool]], (d, on)
    st = side(d, "config_sentence_transformers.json")
    assert st["prompts"] == {"query": "Query: ", "document": "Text: "}, st  # untitled: the {title} line drops out
    assert st["scalingnote_role"] == role and st["similarity_fn_name"] == "cosine", st
    assert side(d, "sentence_bert_config.json")["max_seq_length"] == max_len
    assert side(d, "tokenizer_config.json")["tokenizer_class"] == "PreTrainedTokenizerFast"
w = load_file("run/final/student/model.safetensors")
assert not any(k.startswith("projection.") for k in w), sorted(w)
assert not w["pooler.dense.weight"].any() and side("run/final/student", "config.json")["scalingnote_pooler_placeholder"]
dense = load_file("run/final/student/2_Dense/model.safetensors")
assert dense["linear.weight"].shape == (16, 8) and dense["linear.bias"].shape == (16,), {k: v.shape for k, v in dense.items()}
pp = side("run/final/query_tower", "tokenizer.json")["post_processor"]
assert pp["processors"][-1]["single"][-1] == {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, pp
print("ok: sentence-transformers files, 2_Dense, pooler placeholder, EOS post-processor")
PY
# An older export: the projection inside model.safetensors, no sentence-transformers files.
mkdir old && cp run/final/student/{config.json,tokenizer.json,vocab.txt} old/
python3 - <<'PY'
import json
from safetensors.numpy import load_file, save_file
w = load_file("run/final/student/model.safetensors")
dense = load_file("run/final/student/2_Dense/model.safetensors")
w = {k: v for k, v in w.items() if not k.startswith("pooler.")}
w["projection.weight"], w["projection.bias"] = dense["linear.weight"], dense["linear.bias"]
save_file(w, "old/model.safetensors", metadata={"format": "pt"})
cfg = json.load(open("old/config.json"))
del cfg["scalingnote_pooler_placeholder"]
json.dump(cfg, open("old/config.json", "w"))
PY
python3 - > texts.jsonl <<'PY'
import json
for t in ["apple river stone", " 500 B", "a long text " + " ".join(f"w{i}" for i in range(30))]: print(json.dumps({"text": t}))
PY
E="$BUILD/sn_embed"
same() { python3 -c "import numpy as np, sys; a, b = np.load(sys.argv[1]), np.load(sys.argv[2]); assert a.shape == b.shape and np.array_equal(a, b), (sys.argv, a.shape, b.shape); print('ok:', sys.argv[3])" "$@"; }
$E --model run/final/student --input texts.jsonl --out new.npy --prompt "Query: {text}" --max-len 12 2>> embed.log
$E --model old --input texts.jsonl --out old.npy --prompt "Query: {text}" --max-len 12 2>> embed.log || { cat embed.log; exit 1; }
same new.npy old.npy "an older export (projection.* in model.safetensors) embeds like the new layout"
# No flags = the trained settings as flags.
for t in query_tower student; do
  $E --model run/final/$t --input texts.jsonl --out d_$t.npy 2>> embed.log
  $E --model run/final/$t --input texts.jsonl --out f_$t.npy --prompt "Query: {text}" --max-len 12 \
    --pooling $([ $t = student ] && echo cls || echo mean) 2>> embed.log
  same d_$t.npy f_$t.npy "sn_embed $t: defaults from the export"
done
$E --model run/final/doc_tower --input texts.jsonl --out d_doc.npy 2>> embed.log
$E --model run/final/doc_tower --input texts.jsonl --out f_doc.npy --prompt $'Title: {title}\nText: {text}' \
  --max-len 20 --pooling mean 2>> embed.log
same d_doc.npy f_doc.npy "sn_embed doc_tower: defaults from the export"
V="$BUILD/sn_eval"
$V --query-model run/final/query_tower --doc-model run/final/doc_tower --data data/test --out d.json --quiet > /dev/null 2>> eval.log
$V --query-model run/final/query_tower --doc-model run/final/doc_tower --data data/test --out f.json --quiet \
  --query-prompt "Query: {text}" --doc-prompt $'Title: {title}\nText: {text}' --max-query-len 12 --max-doc-len 20 \
  --pooling mean > /dev/null 2>> eval.log
$V --query-model run/final/query_tower --doc-model run/final/doc_tower --data data/test --out o.json --quiet \
  --query-prompt "{text}" --pooling last > /dev/null 2>> eval.log
python3 - <<'PY'
import json
METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
d, f, o = ({k: json.load(open(p))[k] for k in METRICS} for p in ("d.json", "f.json", "o.json"))
assert d == f, (d, f)
assert d != o, "other flags should change the metrics"
print("ok: sn_eval defaults from the exports equal the trained settings as flags")
PY
# Hub-style names (expect checks each status itself).
set +e
EXPECT_BIN=$E; source "$SRC/tests/cpu/expect_exit2.sh"
HINT="huggingface-cli download Qwen/Qwen2.5-0.5B --local-dir DIR"
expect "sn_embed --model hub id" "$HINT" --model Qwen/Qwen2.5-0.5B --input texts.jsonl --out x.npy
EXPECT_BIN=$V
expect "sn_eval --query-model hub id" "$HINT" --query-model Qwen/Qwen2.5-0.5B --doc-model run/final/doc_tower --data data/test
EXPECT_BIN="$BUILD/sn_train"
expect "stage1.model hub id" "$HINT" --config cfg.json --stage 1 --set run_dir=hub \
  --set stage1.model=Qwen/Qwen2.5-0.5B --set 'stage1.model_desc=""'
exit $fail
