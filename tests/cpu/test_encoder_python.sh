#!/usr/bin/env bash
# The encoder library through its Python binding (python/scalingnote, ctypes over
# build/libscalingnote.so) gives sn_embed's embeddings bit for bit on the CPU, with no settings
# (prompt, pooling, normalisation and length from the export): a decoder tower (Qwen2, last token,
# a query prompt) and a BERT student (CLS + projection), for texts and for ids, whatever max_batch.
# Errors are exceptions carrying the library's message: a missing folder, a folder without weights,
# a malformed config.json (named), an id outside the vocabulary, a too long id sequence.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
sn_test_needs_python numpy
source "$SRC/tests/encoder_towers.sh"
make_encoder_towers 16
python3 -c "
import json
for i, n in enumerate((1, 3, 7, 16)): print(json.dumps({'input_ids': [(7 * i + k) % 4096 for k in range(n)]}))
" > ids.jsonl
for tower in query_tower student; do
  "$BUILD/sn_embed" --model run/final/$tower --input texts.jsonl --out $tower.texts.npy 2>> embed.log
  "$BUILD/sn_embed" --model run/final/$tower --input ids.jsonl --out $tower.ids.npy 2>> embed.log
done
# Broken folders: config.json without weights; a truncated config.json.
mkdir no_weights bad_config
cp run/final/student/config.json no_weights/
echo '{"model_type": ' > bad_config/config.json
SCALINGNOTE_LIB="$BUILD/libscalingnote.so" PYTHONPATH="$SRC/python" python3 - <<'PY'
import json, threading
import numpy as np
from scalingnote import Encoder, EncoderError

texts = [json.loads(l)["text"] for l in open("texts.jsonl")]
ids = [json.loads(l)["input_ids"] for l in open("ids.jsonl")]
for tower in ("query_tower", "student"):
    want, want_ids = np.load(f"{tower}.texts.npy"), np.load(f"{tower}.ids.npy")
    for max_batch in (0, 2):
        with Encoder(f"run/final/{tower}", max_batch=max_batch, threads=1) as enc:
            got = enc.encode(texts)
            assert got.dtype == np.float32 and got.shape == want.shape == (len(texts), enc.dim), (got.shape, want.shape)
            assert np.array_equal(got, want), (tower, max_batch, np.abs(got - want).max())
            got_ids = enc.encode_ids(ids)
            assert np.array_equal(got_ids, want_ids), (tower, max_batch, np.abs(got_ids - want_ids).max())
            assert enc.encode([]).shape == (0, enc.dim)
    # One handle shared by threads: the calls wait for each other and each gets its own rows.
    with Encoder(f"run/final/{tower}") as enc:
        results = [None] * 4
        def run(i):
            results[i] = enc.encode(texts[i:] + texts[:i])
        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        for i, r in enumerate(results):
            assert np.array_equal(r, np.roll(want, -i, axis=0)), (tower, i)
    print(f"ok: {tower}: texts and ids equal sn_embed's bit for bit (dim {want.shape[1]})")

def expect_error(status, needle, fn):
    try:
        fn()
    except EncoderError as e:
        assert e.status == status and needle in str(e), (status, needle, str(e))
        print(f"ok: {e}")
        return
    raise AssertionError(f"no error, expected '{needle}'")

expect_error("model", "no-such-folder", lambda: Encoder("no-such-folder"))
expect_error("model", "model.safetensors", lambda: Encoder("no_weights"))
expect_error("model", "bad_config/config.json", lambda: Encoder("bad_config"))
expect_error("argument", "device 'tpu'", lambda: Encoder("run/final/student", device="tpu"))
expect_error("argument", "max_length 999", lambda: Encoder("run/final/student", max_length=999))
with Encoder("run/final/student") as enc:
    expect_error("input", "id 4096 outside the vocabulary", lambda: enc.encode_ids([[1, 4096]]))
    expect_error("input", "65 tokens", lambda: enc.encode_ids([[1] * 65]))
    expect_error("input", "0 tokens", lambda: enc.encode_ids([[1], []]))
    assert enc.encode(["still works"]).shape == (1, enc.dim)
PY
