"""Interoperability of our safetensors code with the reference `safetensors` library.

Files written by python safetensors (F32, F16) and by hand (BF16: numpy has no bfloat16) go
through `sn_inspect --rewrite` and come back bit-exact (or rounded exactly as IEEE round-to-nearest-
even says, when converting dtype); files our writer makes open with `safetensors.safe_open`, with
their metadata; bad files make sn_inspect exit 2 with the file name on stderr, and leave an
existing output untouched. argv[1] is the build folder. Exit 77 (skip) without numpy/safetensors.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from testlib import SKIP, check, failures  # noqa: E402  (after the path insert)

BAD_INPUT = 2

try:
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file
except ImportError as e:  # pragma: no cover - depends on the machine
    print(f"SKIP: python safetensors/numpy not available ({e})")
    sys.exit(SKIP)

def run(*args):
    return subprocess.run([SN_INSPECT, *args], capture_output=True, text=True)


# ---- bf16 by hand ------------------------------------------------------------------------------

def f32_to_bf16_bits(x):
    """Round to nearest even, as torch and our writer do (finite inputs)."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def bf16_bits_to_f32(h):
    return (np.asarray(h, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def write_handmade(path, tensors, metadata=None):
    """tensors: name -> (dtype string, shape, raw bytes). Packed back to back like the library."""
    header, blobs, offset = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_raw(path):
    """Our own minimal reader (for BF16, which numpy cannot load): name -> (dtype, shape, bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = (info["dtype"], tuple(info["shape"]), data[8 + n + b:8 + n + e])
    return out, header.get("__metadata__"), n


# ---- the checks --------------------------------------------------------------------------------

def sample_tensors(rng):
    return {
        "model.embed_tokens.weight": rng.standard_normal((7, 5)).astype(np.float32),
        "model.layers.0.mlp.up_proj.weight": (rng.standard_normal((4, 6)) * 1e-3).astype(np.float16),
        "model.norm.weight": np.array([1.0, -0.0, 1e-40, 3.4e38, -2.5], dtype=np.float32),  # subnormal, extremes
        "scalar": np.array(3.25, dtype=np.float32),
        "half_edges": np.array([65504, 6.1e-5, 6e-8, -1.0, 0.0], dtype=np.float16),
    }


def test_library_file_round_trip(tmp, tensors):
    src, out = os.path.join(tmp, "lib.safetensors"), os.path.join(tmp, "lib_out.safetensors")
    save_file(tensors, src, metadata={"format": "pt"})
    r = run("--rewrite", src, out)
    check(r.returncode == 0, f"rewrite of a library-written file failed: {r.stderr}")
    back = load_file(out)
    check(set(back) == set(tensors), f"tensor names differ: {sorted(back)}")
    for name, x in tensors.items():
        y = back.get(name)
        check(y is not None and y.dtype == x.dtype and y.shape == x.shape, f"{name}: dtype/shape changed")
        check(y is not None and x.tobytes() == y.tobytes(), f"{name}: values are not bit-exact")
    with safe_open(out, framework="np") as f:
        check(f.metadata() == {"format": "pt"}, f"metadata: {f.metadata()}")


def test_dtype_conversion(tmp, tensors):
    src = os.path.join(tmp, "lib.safetensors")
    f32 = {k: v.astype(np.float32) for k, v in tensors.items()}
    out16 = os.path.join(tmp, "as_f16.safetensors")
    r = run("--rewrite", src, out16, "--dtype", "f16")
    check(r.returncode == 0, f"rewrite --dtype f16: {r.stderr}")
    back = load_file(out16)
    for name, x in f32.items():
        with np.errstate(over="ignore"):  # 3.4e38 becomes inf, as it should
            want = x.astype(np.float16)  # numpy rounds to nearest even, like our writer
        check(back[name].dtype == np.float16, f"{name}: not F16")
        check(want.tobytes() == back[name].tobytes(), f"{name}: f16 rounding differs from numpy")

    outbf = os.path.join(tmp, "as_bf16.safetensors")
    r = run("--rewrite", src, outbf, "--dtype", "bf16")
    check(r.returncode == 0, f"rewrite --dtype bf16: {r.stderr}")
    raw, meta, hlen = read_raw(outbf)
    check((8 + hlen) % 8 == 0, "data region not 8-aligned")
    check(meta == {"format": "pt"}, f"metadata {meta}")
    for name, x in f32.items():
        dtype, shape, data = raw[name]
        check(dtype == "BF16" and shape == x.shape, f"{name}: {dtype} {shape}")
        check(np.frombuffer(data, dtype=np.uint16).tobytes() == f32_to_bf16_bits(x).reshape(-1).tobytes(),
              f"{name}: bf16 rounding differs")
    with safe_open(outbf, framework="np") as f:  # the library validates the header and offsets
        check(sorted(f.keys()) == sorted(f32), "safe_open sees different tensors")
        check(f.metadata() == {"format": "pt"}, "safe_open metadata")


def test_handmade_bf16(tmp):
    # ties: 1 + 2^-8 (even below: 1.0), 1 + 3*2^-8 (odd below: rounds up)
    values = np.array([1.0, 1.00390625, 1.01171875, -3.5, 1e-39, 0.1], dtype=np.float32)
    bits = f32_to_bf16_bits(values)
    src, out = os.path.join(tmp, "hand_bf16.safetensors"), os.path.join(tmp, "hand_f32.safetensors")
    write_handmade(src, {"w": ("BF16", (2, 3), bits.tobytes())}, {"format": "pt", "note": "by hand"})
    r = run("--rewrite", src, out, "--dtype", "f32")
    check(r.returncode == 0, f"rewrite bf16 -> f32: {r.stderr}")
    back = load_file(out)["w"]
    check(back.shape == (2, 3) and back.dtype == np.float32, f"bf16 -> f32 shape/dtype {back.shape} {back.dtype}")
    check(back.reshape(-1).tobytes() == bf16_bits_to_f32(bits).tobytes(), "bf16 -> f32 values")
    r = run("--rewrite", src, os.path.join(tmp, "hand_bf16_again.safetensors"))
    raw, _, _ = read_raw(os.path.join(tmp, "hand_bf16_again.safetensors"))
    check(r.returncode == 0 and raw["w"][0] == "BF16" and raw["w"][2] == bits.tobytes(),
          "bf16 kept as bf16 without --dtype")


def test_sharded_folder(tmp, rng):
    folder = os.path.join(tmp, "sharded")
    os.makedirs(folder)
    a = {"model.a": rng.standard_normal(4).astype(np.float32)}
    b = {"model.b": rng.standard_normal((2, 2)).astype(np.float16)}
    save_file(a, os.path.join(folder, "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file(b, os.path.join(folder, "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
    index = {"metadata": {"total_size": 24}, "weight_map": {"model.a": "model-00001-of-00002.safetensors",
                                                            "model.b": "model-00002-of-00002.safetensors"}}
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    config = {"architectures": ["Qwen2Model"], "model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    out = os.path.join(tmp, "merged.safetensors")
    r = run("--rewrite", folder, out)
    check(r.returncode == 0, f"rewrite sharded folder: {r.stderr}")
    back = load_file(out)
    check(back["model.a"].tobytes() == a["model.a"].tobytes() and back["model.b"].tobytes() == b["model.b"].tobytes(),
          "sharded tensors differ after merge")
    r = run(folder)
    check(r.returncode == 0 and "model.b" in r.stdout and "qwen2" in r.stdout and "F16" in r.stdout,
          f"sn_inspect of a folder: rc {r.returncode}\n{r.stdout}{r.stderr}")


def test_bad_files(tmp):
    ok = np.zeros(2, dtype=np.float32).tobytes()
    cases = {
        "truncated.safetensors": lambda p: open(p, "wb").write(b"\x05\x00"),
        "header_past_end.safetensors": lambda p: open(p, "wb").write(struct.pack("<Q", 1000) + b"{}"),
        "not_json.safetensors": lambda p: open(p, "wb").write(struct.pack("<Q", 6) + b"{oops}"),
        "int64.safetensors": lambda p: write_handmade(p, {"ids": ("I64", (1,), bytes(8))}),
        "overlap.safetensors": lambda p: write_overlapping(p, ok),
        "short_data.safetensors": lambda p: write_handmade(p, {"w": ("F32", (3,), ok)}),
    }
    existing = os.path.join(tmp, "keep.safetensors")
    for name, make in cases.items():
        path = os.path.join(tmp, name)
        make(path)
        for args in ([path], ["--rewrite", path, existing]):
            with open(existing, "wb") as f:
                f.write(b"precious")
            r = run(*args)
            check(r.returncode == BAD_INPUT, f"{' '.join(args)}: exit {r.returncode}, expected {BAD_INPUT}")
            check(path in r.stderr, f"{name}: stderr does not name the file: {r.stderr!r}")
            check(len(r.stderr.strip().splitlines()) == 1, f"{name}: expected one error line: {r.stderr!r}")
            with open(existing, "rb") as f:
                check(f.read() == b"precious", f"{name}: failed rewrite touched the existing output")
    r = run("--rewrite", os.path.join(tmp, "lib.safetensors"), existing, "--dtype", "f64")
    check(r.returncode == BAD_INPUT and "f64" in r.stderr, f"bad --dtype: {r.returncode} {r.stderr!r}")
    r = run()
    check(r.returncode == BAD_INPUT and "usage" in r.stderr, "no arguments: usage and exit 2")


def write_overlapping(path, raw):
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + raw)


def main():
    global SN_INSPECT
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    SN_INSPECT = os.path.join(build, "sn_inspect")
    if not os.access(SN_INSPECT, os.X_OK):
        print(f"FAIL: {SN_INSPECT} is not built", file=sys.stderr)
        return 1
    rng = np.random.default_rng(0)
    tensors = sample_tensors(rng)
    with tempfile.TemporaryDirectory() as tmp:
        test_library_file_round_trip(tmp, tensors)
        test_dtype_conversion(tmp, tensors)
        test_handmade_bf16(tmp)
        test_sharded_folder(tmp, rng)
        test_bad_files(tmp)
    print(f"test_safetensors_python: {'%d check(s) failed' % failures() if failures() else 'all checks passed'}")
    return 1 if failures() else 0


if __name__ == "__main__":
    sys.exit(main())
