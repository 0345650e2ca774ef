#!/usr/bin/env bash
# The towers sn_train exports load in the Hugging Face stack as they are, with no flags, and give
# sn_embed's embeddings (sn_embed also without flags: prompt, pooling, normalisation and length come
# from the export), max abs diff <= 1e-5 fp32:
# - AutoTokenizer + AutoModel, pooled, projected (2_Dense) and normalised by hand as the export's
#   sentence-transformers files say, with the stored prompt; no missing/unexpected weights and no
#   warnings on load; AutoTokenizer's ids equal training's (the source tokenizer through sn, EOS
#   appended for decoders) on tricky texts;
# - SentenceTransformer(dir): encode_query / encode_document (the stored prompts) as the tower's role;
# - a LoRA run's peft adapter: PeftModel over the base folder gives the merged tower's embeddings.
# Towers: stage 1's query and doc towers (Qwen2, last token), the stage-2 BERT student (CLS + projection).
# Needs torch, transformers, sentence-transformers and peft; skips (77) without them.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
sn_test_needs_python torch transformers sentence_transformers peft numpy safetensors
python3 "$SRC/tests/synth_data.py" data --examples 32 --test-queries 2 > /dev/null
DECODER_TOKENIZER="$SRC/configs/default/decoder/tokenizer.json"
STUDENT_TOKENIZER="$SRC/configs/default/student/tokenizer.json"
# The default run's shape, tiny: a query prompt, the default doc prompt (its {title} line drops out
# for untitled texts), last-token towers, a CLS student narrower than the teacher (a projection).
cat > cfg.json <<JSON
{"run_dir": "run", "data": {"train": ["data/train.jsonl"], "query_prompt": "Query: {text}",
                            "max_query_len": 16, "max_doc_len": 24},
 "stage1": {"model_desc": {"arch": "qwen2", "layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2,
                           "intermediate": 64, "vocab": 4096},
            "tokenizer": "$DECODER_TOKENIZER", "pooling": "last", "batch_queries": 8, "steps": 2},
 "stage2": {"student_desc": {"arch": "bert", "layers": 2, "hidden": 16, "heads": 2, "intermediate": 32,
                             "vocab": 4096, "max_positions": 64},
            "tokenizer": "$STUDENT_TOKENIZER", "pooling": "cls", "batch_queries": 8, "steps": 2}}
JSON
"$BUILD/sn_train" --config cfg.json 2> train.log || { cat train.log; exit 1; }
"$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=lora --set "stage1.model=\"$WORK/run/final/query_tower\"" --set 'stage1.model_desc=""' \
  --set stage1.lora.rank=2 --set stage1.lora.alpha=4 2> lora.log || { cat lora.log; exit 1; }
# Texts where tokenizers disagree easily: digits after a space, unicode (NFC), fullwidth letters,
# whitespace runs, a single character, one longer than max_query_len (cut, EOS kept).
python3 - > texts.jsonl <<'PY'
import json
texts = ["apple river stone under the bridge", " 500 B", "version 1.2.10 of x86_64", "héllo wörld, ünïcode — 123",
         "Ｆｕｌｌ width ＡＢＣ and e\u0301 combining", "tab\there\n\nnew  lines   ", "x",
         "a long text " + " ".join(f"word{i}" for i in range(40))]
for t in texts: print(json.dumps({"text": t}))
PY
for tower in run/final/query_tower run/final/doc_tower run/final/student lora/final/query_tower; do
  "$BUILD/sn_embed" --model $tower --input texts.jsonl --out $(echo $tower | tr / _).npy 2>> embed.log ||
    { cat embed.log; exit 1; }
done
# Training's ids of each text (no prompt): the source tokenizer through sn, EOS appended for decoders.
"$BUILD/sn_tokenize" --tokenizer "$DECODER_TOKENIZER" --no-special --input texts.jsonl > decoder_ids.txt
"$BUILD/sn_tokenize" --tokenizer "$STUDENT_TOKENIZER" --input texts.jsonl > student_ids.txt
python3 - <<'PY'
import json, logging, os, warnings
import numpy as np, torch
from safetensors.numpy import load_file
import transformers
from transformers import AutoModel, AutoTokenizer
from sentence_transformers import SentenceTransformer
from peft import PeftModel

TOL = 1e-5
texts = [json.loads(l)["text"] for l in open("texts.jsonl")]
train_ids = {"decoder": [json.loads(l) + [0] for l in open("decoder_ids.txt")],  # <|endoftext|> is id 0
             "student": [json.loads(l) for l in open("student_ids.txt")]}

class Capture(logging.Handler):  # transformers' and sentence-transformers' warnings on load
    def __init__(self): super().__init__(logging.WARNING); self.records = []
    def emit(self, r): self.records.append(r.getMessage())
cap = Capture()
for name in ("transformers", "sentence_transformers", "peft"):
    logging.getLogger(name).addHandler(cap)
transformers.logging.set_verbosity_warning()

def no_warnings(what):
    msgs = [m for m in cap.records if m.strip()]
    cap.records.clear()
    assert not msgs, f"{what}: warnings on load: {msgs}"

def side(d, name):
    return json.load(open(os.path.join(d, name)))

def by_hand(d, model, tok, prompt):
    modules = side(d, "modules.json")
    types = [m["type"].rsplit(".", 1)[-1] for m in modules]
    pool_cfg = side(d, os.path.join(modules[types.index("Pooling")]["path"], "config.json"))
    max_len = side(d, "sentence_bert_config.json")["max_seq_length"]
    rows = []
    for t in texts:
        enc = tok(prompt + t, truncation=True, max_length=max_len, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state[0].double()
        v = h[-1] if pool_cfg["pooling_mode_lasttoken"] else h[0] if pool_cfg["pooling_mode_cls_token"] else h.mean(0)
        v = v.numpy()
        if "Dense" in types:
            w = load_file(os.path.join(d, modules[types.index("Dense")]["path"], "model.safetensors"))
            v = w["linear.weight"].astype(np.float64) @ v + w["linear.bias"]
        if "Normalize" in types:
            v = v / np.linalg.norm(v)
        rows.append(v)
    return np.stack(rows)

def check(d, kind):
    ours = np.load(d.replace("/", "_") + ".npy").astype(np.float64)
    cfg = side(d, "config_sentence_transformers.json")
    role = cfg["scalingnote_role"]
    prompt = cfg["prompts"][role]
    cap.records.clear()
    tok = AutoTokenizer.from_pretrained(d)
    model, info = AutoModel.from_pretrained(d, dtype=torch.float32, output_loading_info=True)
    model.eval()
    bad = {k: v for k, v in info.items() if v and k != "error_msgs"} | ({"error_msgs": info["error_msgs"]} if info.get("error_msgs") else {})
    assert not bad, f"{d}: loading info {bad}"
    no_warnings(f"{d} AutoModel/AutoTokenizer")
    got = [tok(t)["input_ids"] for t in texts]
    for t, g, want in zip(texts, got, train_ids[kind]):
        assert g == want, f"{d}: {type(tok).__name__} tokenizes {t!r} as {g}, training as {want}"
    cap.records.clear()  # the untruncated long text's "longer than the maximum" notice
    err = np.abs(by_hand(d, model, tok, prompt) - ours).max()
    assert err <= TOL, f"{d}: AutoModel by hand vs sn_embed max abs diff {err}"
    st = SentenceTransformer(d, device="cpu")
    no_warnings(f"{d} SentenceTransformer")
    encode = st.encode_query if role == "query" else st.encode_document
    emb = encode(texts, convert_to_numpy=True, batch_size=4)
    assert emb.shape == ours.shape, (d, emb.shape, ours.shape)
    st_err = np.abs(emb.astype(np.float64) - ours).max()
    assert st_err <= TOL, f"{d}: SentenceTransformer vs sn_embed max abs diff {st_err}"
    print(f"{d}: {type(tok).__name__} + {type(model).__name__}: ids as trained, max abs diff {err:.1e}; "
          f"SentenceTransformer ({len(st)} modules, {encode.__name__}, prompt {prompt!r}) {st_err:.1e}")

check("run/final/query_tower", "decoder")
check("run/final/doc_tower", "decoder")
check("run/final/student", "student")

# LoRA: the peft adapter over its base folder embeds like the merged export.
d = "lora/final/query_adapter"
base_dir = side(d, "adapter_config.json")["base_model_name_or_path"]
cap.records.clear()
base = AutoModel.from_pretrained(base_dir, dtype=torch.float32)
peft_model = PeftModel.from_pretrained(base, d).eval()
no_warnings(f"{d} PeftModel")
merged = "lora/final/query_tower"
model = AutoModel.from_pretrained(merged, dtype=torch.float32)  # only for the hand pooling's helper
tok = AutoTokenizer.from_pretrained(merged)
cfg = side(merged, "config_sentence_transformers.json")
ref = by_hand(merged, peft_model, tok, cfg["prompts"][cfg["scalingnote_role"]])
ours = np.load(merged.replace("/", "_") + ".npy").astype(np.float64)
err = np.abs(ref - ours).max()
assert err <= TOL, f"{d}: PeftModel vs sn_embed of the merged tower max abs diff {err}"
print(f"{d}: PeftModel over {os.path.basename(base_dir)} vs merged sn_embed max abs diff {err:.1e}")
PY
