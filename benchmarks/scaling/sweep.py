#!/usr/bin/env python3
"""The scaling study: model sizes x init (random, pretrained), each through stage 0 (pretrained
only), stage 1 at the same steps and batch (so the same tokens) and the evaluation; then a table,
the fit of the held-out contrastive loss L(N) = A N^-alpha + L_inf and of nDCG@10 against log N,
and an SVG plot. See docs/SCALING.md.

usage: sweep.py --config SWEEP.json [--bin BUILD_DIR] [--max-cells N] [--report-only]

Every (size, init) cell runs in OUT/cells/<size>-<init>/ (stage0/ and stage1/ run folders of
sn_train). OUT/sweep_state.json (written atomically) records each finished phase and cell, so a
rerun skips them; an interrupted phase is continued with sn_train --resume auto from its newest
complete checkpoint (or restarted with --overwrite when it has none). Outputs: OUT/results.json,
OUT/results.md, OUT/loss_vs_size.svg. Bad config: exit 2 naming the field.
"""
import argparse
import json
import math
import os
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

INITS = ("random", "pretrained")
SIZE_KEYS = {"name": str, "layers": int, "hidden": int, "heads": int, "kv_heads": int,
             "intermediate": int, "head_dim": int, "set": dict}
SHAPE_KEYS = tuple(k for k, kind in SIZE_KEYS.items() if kind is int)  # into the model description
STATE_FILE = "sweep_state.json"
EMBEDDING_TENSORS = ("embed_tokens", "lm_head", "embeddings.")  # not counted in N
MIN_SIZES_FOR_FIT = 3


class ConfigError(Exception):
    pass


class Stopped(Exception):
    """The deadline came during a phase: sn_train checkpointed (SIGTERM) or sn_eval was stopped."""


EXIT_STOPPED = 3  # stopped before the end (--deadline-s, --stop-after-steps): a rerun continues
deadline = None   # time.time() after which the running phase is stopped
stop_after_steps = None  # --stop-after-steps: the next sn_train phase takes this many steps and stops


def bad(field, what):
    raise ConfigError(f"{field}: {what}")


# ---- the sweep config --------------------------------------------------------------------------

def load_sweep(path):
    try:
        with open(path) as f:
            cfg = json.load(f)
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read: {e.strerror}")
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: not JSON: {e.msg}")
    if not isinstance(cfg, dict):
        bad(path, "expected a JSON object")
    here = os.path.dirname(os.path.abspath(path))
    known = {"_comment", "base_config", "out_dir", "set", "stage1_steps", "eval_data", "sizes", "inits",
             "stage0"}
    for k in cfg:
        if k not in known:
            bad(f"{path}: '{k}'", f"unknown key (expected {', '.join(sorted(known - {'_comment'}))})")

    def path_of(field, required=True):
        v = cfg.get(field)
        if v is None and not required:
            return None
        if not isinstance(v, str) or not v:
            bad(f"{path}: '{field}'", "expected a path (relative to the sweep file)")
        return os.path.normpath(os.path.join(here, v))

    out = {"base_config": path_of("base_config"), "out_dir": path_of("out_dir"),
           "eval_data": path_of("eval_data", required=False)}
    if not os.path.isfile(out["base_config"]):
        bad(f"{path}: 'base_config'", f"{out['base_config']} is not a file")
    steps = cfg.get("stage1_steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        bad(f"{path}: 'stage1_steps'", f"expected an integer >= 1, got {steps!r}")
    out["stage1_steps"] = steps
    sets = cfg.get("set", {})
    if not isinstance(sets, dict):
        bad(f"{path}: 'set'", "expected an object of dotted sn_train config keys")
    out["set"] = sets

    sizes = cfg.get("sizes")
    if not isinstance(sizes, list) or len(sizes) < 1:
        bad(f"{path}: 'sizes'", "expected a non-empty list of {name, layers, hidden, heads, ...}")
    names = set()
    for i, s in enumerate(sizes):
        where = f"{path}: 'sizes[{i}]'"
        if not isinstance(s, dict):
            bad(where, "expected an object")
        for k, v in s.items():
            if k not in SIZE_KEYS:
                bad(f"{where}.{k}", f"unknown key (expected {', '.join(SIZE_KEYS)})")
            if SIZE_KEYS[k] is int and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                bad(f"{where}.{k}", f"expected an integer >= 1, got {v!r}")
            if SIZE_KEYS[k] is dict and (not isinstance(v, dict) or not all(isinstance(key, str) and key for key in v)):
                bad(f"{where}.{k}", f"expected an object of dotted sn_train config keys, got {v!r}")
        name = s.get("name")
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
            bad(f"{where}.name", f"expected a name of letters, digits, '-', '_', '.', got {name!r}")
        if name in names:
            bad(f"{where}.name", f"'{name}' is used twice")
        names.add(name)
    out["sizes"] = sizes

    inits = cfg.get("inits", list(INITS))
    if not isinstance(inits, list) or not inits or any(i not in INITS for i in inits) or len(set(inits)) != len(inits):
        bad(f"{path}: 'inits'", f"expected a list of distinct values among {list(INITS)}, got {inits!r}")
    out["inits"] = inits
    stage0 = cfg.get("stage0", {})
    if not isinstance(stage0, dict):
        bad(f"{path}: 'stage0'", "expected an object of stage0.* settings")
    if "pretrained" in inits:
        data = stage0.get("data")
        data = [data] if isinstance(data, str) else data
        if not isinstance(data, list) or not data or not all(isinstance(d, str) and d for d in data):
            bad(f"{path}: 'stage0.data'", "expected the pretraining text (a path or a list), needed by 'pretrained'")
        stage0 = dict(stage0, data=[os.path.normpath(os.path.join(here, d)) for d in data])
        for k in ("model", "model_desc"):
            if k in stage0:
                bad(f"{path}: 'stage0.{k}'", "is set by the sweep (each size's model)")
        if "eval_data" in stage0:
            stage0["eval_data"] = os.path.normpath(os.path.join(here, stage0["eval_data"]))
    out["stage0"] = stage0
    return out


# ---- running sn_train --------------------------------------------------------------------------

def resolved_base(bin_dir, sweep):
    """The base config with every key resolved (absolute paths), as sn_train prints it, with the
    sweep's 'set' applied and, unless it names one, a token cache shared by every cell."""
    base_config = sweep["base_config"]
    r = subprocess.run([os.path.join(bin_dir, "sn_train"), "--config", base_config, "--print-config"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise ConfigError(f"base_config {base_config}: sn_train --print-config failed:\n{r.stderr.strip()}")
    base = json.loads(r.stdout)
    for k, v in sweep["set"].items():
        set_dotted(base, k, v)
    if not base["data"]["cache_dir"]:
        base["data"]["cache_dir"] = os.path.join(sweep["out_dir"], "cache")
    if not sweep["eval_data"]:
        sweep["eval_data"] = base["eval"]["data"]
    if not sweep["eval_data"]:
        raise ConfigError("eval_data: the sweep needs test data (eval_data, or eval.data in base_config)")
    base_model_desc(base)  # checked now, not when the first cell starts
    return base


def apply_size_set(cfg, size):
    """The size's own dotted keys (a learning rate for its depth, say), over the sweep's."""
    for k, v in size.get("set", {}).items():
        set_dotted(cfg, k, v)


def set_dotted(cfg, key, value):
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def merge(dst, src):
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge(dst[k], v)
        else:
            dst[k] = v


def base_model_desc(base):
    desc = base["stage1"]["model_desc"]
    if isinstance(desc, str):
        if not desc:
            raise ConfigError("base_config: stage1.model_desc: the sweep needs a model description to resize")
        with open(desc) as f:
            desc = json.load(f)
    return dict(desc)


def size_desc(base_desc, size):
    desc = dict(base_desc)
    desc.pop("head_dim", None)  # follows hidden / heads unless the size names it
    desc.update({k: v for k, v in size.items() if k in SHAPE_KEYS})
    return desc


def atomic_write(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run_logged(cmd, log_path, done_marker):
    """Runs cmd with its output appended to log_path; returns its wall time in seconds. At the
    deadline it gets SIGTERM (sn_train finishes its step, checkpoints and exits 0); done_marker, a
    file the finished program writes, tells a finished phase from a stopped one."""
    t0 = time.time()
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.terminate()
            rc = proc.wait()
    if not os.path.exists(done_marker):
        if rc == 0 and "--stop-after" in cmd:
            raise Stopped(f"{' '.join(cmd)} stopped after the steps asked for")
        if deadline is not None and time.time() >= deadline:
            raise Stopped(f"{' '.join(cmd)} stopped at the deadline")
        raise RuntimeError(f"{' '.join(cmd)} exited {rc} without writing {done_marker}; see {log_path}")
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}; see {log_path}")
    return time.time() - t0


def run_phase(bin_dir, config, stage, log_path, done_marker):
    """Runs sn_train on a written config; resumes an interrupted run folder."""
    run_dir = config["run_dir"]
    cfg_path = os.path.join(os.path.dirname(run_dir), f"{os.path.basename(run_dir)}.json")
    atomic_write(cfg_path, json.dumps(config, indent=1) + "\n")
    cmd = [os.path.join(bin_dir, "sn_train"), "--config", cfg_path, "--stage", str(stage)]
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        has_ckpt = any(n.startswith("ckpt-") for n in os.listdir(run_dir))
        cmd.append("--resume" if has_ckpt else "--overwrite")
        if has_ckpt:
            cmd.append("auto")
    global stop_after_steps
    if stop_after_steps:
        cmd += ["--stop-after", str(stop_after_steps)]
        stop_after_steps = None
    return run_logged(cmd, log_path, done_marker)


def run_eval(bin_dir, sweep, base, stage1_dir, eval_path, log_path):
    """sn_eval of the final towers on the test data, with the held-out contrastive loss at the
    stage-1 temperature; prompts, pooling and lengths come from the towers' export."""
    final = os.path.join(stage1_dir, "final")
    cmd = [os.path.join(bin_dir, "sn_eval"), "--query-model", os.path.join(final, "query_tower"),
           "--doc-model", os.path.join(final, "doc_tower"), "--data", sweep["eval_data"],
           "--split", base["eval"]["split"], "--batch", str(base["eval"]["batch"]), "--device", base["device"],
           "--contrastive-loss", repr(base["stage1"]["temperature"]), "--quiet", "--out", eval_path]
    if os.path.exists(eval_path):
        os.remove(eval_path)
    return run_logged(cmd, log_path, eval_path)


def count_params(model_dir):
    """(total, non-embedding) parameters of one tower from its safetensors header."""
    total = non_embedding = 0
    for name in sorted(os.listdir(model_dir)):
        if not name.endswith(".safetensors"):
            continue
        with open(os.path.join(model_dir, name), "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for tensor, info in header.items():
            if tensor == "__metadata__":
                continue
            n = math.prod(info["shape"])
            total += n
            if not any(e in tensor for e in EMBEDDING_TENSORS):
                non_embedding += n
    return total, non_embedding


def run_cell(bin_dir, sweep, base, size, init, cell_state, save_state):
    cell_dir = os.path.join(sweep["out_dir"], "cells", f"{size['name']}-{init}")
    os.makedirs(cell_dir, exist_ok=True)
    log_path = os.path.join(cell_dir, "sn_train.log")
    desc = size_desc(base_model_desc(base), size)
    phases = cell_state.setdefault("phases", {})
    lm_config = os.path.join(cell_dir, "stage0", "final", "lm", "config.json")
    doc_tower = os.path.join(cell_dir, "stage1", "final", "doc_tower", "config.json")
    eval_path = os.path.join(cell_dir, "eval.json")
    # A phase recorded as done whose output is gone (a state file carried to a fresh machine
    # without the cell folders) runs again, and so does every phase after it.
    for name, output in (("stage0", lm_config), ("stage1", doc_tower), ("eval", eval_path)):
        if name in phases and not os.path.exists(output):
            for later in ("stage0", "stage1", "eval")[("stage0", "stage1", "eval").index(name):]:
                phases.pop(later, None)

    if init == "pretrained" and "stage0" not in phases:
        c0 = json.loads(json.dumps(base))
        c0["run_dir"] = os.path.join(cell_dir, "stage0")
        merge(c0["stage0"], {"model": "", "model_desc": desc, "tokenizer": base["stage1"]["tokenizer"]})
        merge(c0["stage0"], sweep["stage0"])
        apply_size_set(c0, size)
        c0["eval"]["data"] = ""
        phases["stage0"] = {"seconds": run_phase(bin_dir, c0, 0, log_path, lm_config)}
        phases.pop("stage1", None)  # a new LM: its towers are to be trained again
        phases.pop("eval", None)
        save_state()

    if "stage1" not in phases:
        c1 = json.loads(json.dumps(base))
        c1["run_dir"] = os.path.join(cell_dir, "stage1")
        if init == "pretrained":
            c1["stage1"]["model"] = os.path.join(cell_dir, "stage0", "final", "lm")
            c1["stage1"]["model_desc"] = ""
        else:
            c1["stage1"]["model"] = ""
            c1["stage1"]["model_desc"] = desc
        c1["stage1"]["steps"] = sweep["stage1_steps"]
        apply_size_set(c1, size)
        c1["eval"]["data"] = ""  # evaluated below, once (sn_train would embed the untrained towers too)
        phases["stage1"] = {"seconds": run_phase(bin_dir, c1, 1, log_path, doc_tower)}
        phases.pop("eval", None)
        save_state()

    stage1_dir = os.path.join(cell_dir, "stage1")
    if "eval" not in phases:
        phases["eval"] = {"seconds": run_eval(bin_dir, sweep, base, stage1_dir, eval_path, log_path)}
        save_state()
    with open(eval_path) as f:
        ev = json.load(f)
    total, non_embedding = count_params(os.path.join(stage1_dir, "final", "query_tower"))
    train_seconds = phases.get("stage0", {}).get("seconds", 0.0) + phases["stage1"]["seconds"]
    return {"size": size["name"], "init": init, "layers": desc["layers"], "hidden": desc["hidden"],
            "params": total, "params_non_embedding": non_embedding,
            "contrastive_loss": ev["contrastive_loss"], "ndcg@10": ev["ndcg@10"], "recall@100": ev["recall@100"],
            "seconds_stage0": phases.get("stage0", {}).get("seconds", 0.0),
            "seconds_stage1": phases["stage1"]["seconds"], "seconds_eval": phases["eval"]["seconds"],
            "seconds": train_seconds + phases["eval"]["seconds"]}


# ---- reports -----------------------------------------------------------------------------------

def fits(cells, inits):
    import scaling_fit  # numpy: needed for the reports only, not to run the cells
    out = {}
    for init in inits:
        rows = sorted((c for c in cells if c["init"] == init), key=lambda c: c["params_non_embedding"])
        if len(rows) < MIN_SIZES_FOR_FIT:
            continue
        n = [c["params_non_embedding"] for c in rows]
        entry = {}
        try:
            entry["loss"] = scaling_fit.fit_loss_law(n, [c["contrastive_loss"] for c in rows])
        except ValueError as e:
            entry["loss_error"] = str(e)
        entry["ndcg@10"] = scaling_fit.fit_log_linear(n, [c["ndcg@10"] for c in rows])
        out[init] = entry
    return out


def markdown(cells, fit):
    lines = ["| size | init | layers | hidden | params | non-embedding params | held-out contrastive loss | "
             "nDCG@10 | R@100 | wall time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['size']} | {c['init']} | {c['layers']} | {c['hidden']} | {c['params']:,} | "
                     f"{c['params_non_embedding']:,} | {c['contrastive_loss']:.4f} | {c['ndcg@10']:.4f} | "
                     f"{c['recall@100']:.4f} | {c['seconds']:.1f} |")
    lines.append("")
    for init, f in fit.items():
        if "loss" in f:
            l = f["loss"]
            lines.append(f"- {init}: L(N) = {l['A']:.4g} · N^({-l['alpha']:.4f}) + {l['L_inf']:.4f} "
                         f"(α = {l['alpha']:.4f}, R² = {l['r2']:.4f})")
        n = f["ndcg@10"]
        lines.append(f"- {init}: nDCG@10 = {n['intercept']:.4f} {n['slope_per_decade']:+.4f} · log10 N "
                     f"(R² = {n['r2']:.4f})")
    return "\n".join(lines) + "\n"


def write_reports(sweep, cells):
    try:
        import scaling_plot
    except ImportError as e:
        print(f"sweep.py: no reports here ({e}): run --report-only where numpy is installed", file=sys.stderr)
        return
    out = sweep["out_dir"]
    fit = fits(cells, sweep["inits"])
    atomic_write(os.path.join(out, "results.json"), json.dumps({"cells": cells, "fits": fit}, indent=1) + "\n")
    atomic_write(os.path.join(out, "results.md"), markdown(cells, fit))
    atomic_write(os.path.join(out, "loss_vs_size.svg"), scaling_plot.loss_vs_size_svg(cells, fit, sweep["inits"]))


# ---- main --------------------------------------------------------------------------------------

def project_version():
    cmake = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "CMakeLists.txt")
    with open(cmake) as f:
        for line in f:
            if line.startswith("project(scalingnote VERSION "):
                return line.split()[2].rstrip(")")
    return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", action="version", version=f"sweep.py (scalingnote) {project_version()}")
    ap.add_argument("--config", required=True, help="the sweep config (JSON; docs/SCALING.md)")
    ap.add_argument("--bin", default="build", help="folder of sn_train (default: build)")
    ap.add_argument("--max-cells", type=int, default=0,
                    help="run at most N unfinished cells, then stop (0 = all); a rerun continues")
    ap.add_argument("--report-only", action="store_true", help="rewrite the reports from the finished cells")
    ap.add_argument("--deadline-s", type=float, default=0,
                    help="stop after S seconds (the running sn_train checkpoints), exit 3; a rerun "
                         "continues (0 = no limit)")
    ap.add_argument("--stop-after-steps", type=int, default=0,
                    help="the next sn_train phase takes N steps, checkpoints and the sweep stops, exit 3 "
                         "(an interruption on purpose: tests, time-limited jobs); 0 = off")
    args = ap.parse_args()
    if args.stop_after_steps < 0:
        ap.error(f"--stop-after-steps {args.stop_after_steps}: expected 0 or more")
    global stop_after_steps
    stop_after_steps = args.stop_after_steps or None
    if args.max_cells < 0:
        ap.error(f"--max-cells {args.max_cells}: expected 0 or more")
    if args.deadline_s < 0:
        ap.error(f"--deadline-s {args.deadline_s}: expected 0 or more")
    global deadline
    deadline = time.time() + args.deadline_s if args.deadline_s else None
    try:
        sweep = load_sweep(args.config)
        base = resolved_base(args.bin, sweep)
    except ConfigError as e:
        print(f"sweep.py: {e}", file=sys.stderr)
        return 2
    os.makedirs(sweep["out_dir"], exist_ok=True)
    state_path = os.path.join(sweep["out_dir"], STATE_FILE)
    state = {"cells": {}}
    if os.path.exists(state_path):
        with open(state_path) as f:
            state = json.load(f)

    def save_state():
        atomic_write(state_path, json.dumps(state, indent=1) + "\n")

    keys = [f"{size['name']}-{init}" for size in sweep["sizes"] for init in sweep["inits"]]

    def finished_cells():  # in config order
        return [state["cells"][k]["result"] for k in keys if "result" in state["cells"].get(k, {})]

    ran = 0
    for size in sweep["sizes"]:
        for init in sweep["inits"]:
            key = f"{size['name']}-{init}"
            cell = state["cells"].setdefault(key, {})
            if "result" in cell:
                continue
            if args.report_only or (args.max_cells and ran >= args.max_cells):
                continue
            print(f"sweep: cell {key}", file=sys.stderr, flush=True)
            try:
                if deadline is not None and time.time() >= deadline:
                    raise Stopped(f"deadline reached before cell {key}")
                cell["result"] = run_cell(args.bin, sweep, base, size, init, cell, save_state)
            except Stopped as e:
                save_state()
                write_reports(sweep, finished_cells())
                print(f"sweep.py: {e}; {len(finished_cells())} cells finished; rerun to continue", file=sys.stderr)
                return EXIT_STOPPED
            except RuntimeError as e:
                print(f"sweep.py: {e}", file=sys.stderr)
                return 1
            save_state()
            ran += 1
    cells = finished_cells()
    write_reports(sweep, cells)
    total = len(keys)
    print(f"sweep: {len(cells)} of {total} cells finished; {os.path.join(sweep['out_dir'], 'results.md')}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
