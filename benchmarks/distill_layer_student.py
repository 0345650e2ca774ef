#!/usr/bin/env python3
"""A student folder cut from the stage-1 query tower (DistilBERT's initialisation: the teacher's
embeddings, its first LAYERS blocks and its final norm), for stage2.student.
    benchmarks/distill_layer_student.py QUERY_TOWER OUT_DIR LAYERS"""
import json, os, shutil, sys
from safetensors.numpy import load_file, save_file

src, out, layers = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(out, exist_ok=True)
cfg = json.load(open(f"{src}/config.json"))
assert layers <= cfg["num_hidden_layers"], "more layers than the teacher has"
cfg["num_hidden_layers"] = layers
cfg["max_window_layers"] = min(cfg.get("max_window_layers", layers), layers)
json.dump(cfg, open(f"{out}/config.json", "w"), indent=2)
kept = {}
for name, w in load_file(f"{src}/model.safetensors").items():
    parts = name.split(".")
    if "layers" in parts and int(parts[parts.index("layers") + 1]) >= layers:
        continue
    kept[name] = w
save_file(kept, f"{out}/model.safetensors", metadata={"format": "pt"})
for f in ("tokenizer.json", "tokenizer_config.json"):
    if os.path.exists(f"{src}/{f}"):
        shutil.copy(f"{src}/{f}", out)
print(f"{out}: {layers} of the teacher's layers, {len(kept)} tensors")
