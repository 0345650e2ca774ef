#!/usr/bin/env python3
"""A copy of a decoder folder (a stage-0 RUN/final/lm) with one part reset, to find where a
pretrained start's trouble lives (docs/SCALING.md, "Why the pretrained init loses at CPU scale").
Reset parts get sn's fresh init: matrices normal(0, 0.02), norms 1, biases 0.

  embed    the (tied) embedding table
  layers   every transformer block (the final norm kept)
  norm     the final norm
  all      everything: a random init in the folder's format (the control for loading a folder)
  center   the table's mean row projected out of every row
  pc1      the centred table's first principal direction projected out of every row
  center+pc1  both

  python3 benchmarks/scaling/reset_parts.py LM_DIR OUT_DIR PART [--seed N]
Then: sn_train --config CELL/stage1.json --stage 1 --set stage1.model=OUT_DIR --set run_dir=...
"""
import argparse
import shutil
import sys

import numpy as np

INIT_STD = 0.02  # host/model/model.c: SN_INIT_STD
PARTS = ("embed", "layers", "norm", "all", "center", "pc1", "center+pc1")


def fresh(name, v, rng):
    if v.ndim == 2:
        return (rng.standard_normal(v.shape) * INIT_STD).astype(np.float32)
    return np.ones_like(v) if "norm" in name else np.zeros_like(v)


def project_out(table, u):
    u = u / np.linalg.norm(u)
    return (table - np.outer(table @ u, u)).astype(np.float32)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="decoder folder (config.json, model.safetensors)")
    ap.add_argument("dst", help="the copy to write (replaced if present)")
    ap.add_argument("part", choices=PARTS, help="what to reset")
    ap.add_argument("--seed", type=int, default=7, help="seed of the fresh weights (default 7)")
    a = ap.parse_args(argv)
    from safetensors.numpy import load_file, save_file

    w = load_file(f"{a.src}/model.safetensors")
    rng = np.random.default_rng(a.seed)
    shutil.rmtree(a.dst, ignore_errors=True)
    shutil.copytree(a.src, a.dst)
    for k in sorted(w):
        v, table = w[k], "embed_tokens" in k
        if a.part == "all" or (a.part == "embed" and table) or (a.part == "layers" and ".layers." in k) or \
                (a.part == "norm" and k.endswith("model.norm.weight")):
            w[k] = fresh(k, v, rng)
        if table and a.part in ("center", "center+pc1"):
            v = w[k] = project_out(v, v.mean(0))
        if table and a.part in ("pc1", "center+pc1"):
            w[k] = project_out(v, np.linalg.svd(v - v.mean(0), full_matrices=False)[2][0])
    save_file(w, f"{a.dst}/model.safetensors", metadata={"format": "pt"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
