#!/usr/bin/env bash
# The installed encoder library is usable by others as docs/USAGE.md says: `cmake --install` into a
# temporary prefix, then examples/encode_queries.c built against it three ways — pkg-config with the
# shared library, pkg-config --static with libscalingnote.a, and a CMake project that calls
# find_package(scalingnote) — and each build embeds texts exactly as the in-tree example does. The
# shared library exports encoder.h's functions only.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
sn_test_needs_command pkg-config
cmake --install "$BUILD" --prefix "$WORK/prefix" > install.log
PC_DIR=$(dirname "$(find "$WORK/prefix" -name scalingnote.pc)")
export PKG_CONFIG_PATH=$PC_DIR
CC=${CC:-cc}
# A tiny tower to embed with: one training step writes it.
python3 "$SRC/tests/synth_data.py" data --examples 16 --test-queries 2 > /dev/null
"$BUILD/sn_train" --set run_dir=run --set 'data.train=["data/train.jsonl"]' \
  --set 'stage1.model_desc={"arch": "qwen2", "layers": 1, "hidden": 16, "heads": 2, "kv_heads": 1, "vocab": 4096}' \
  --set "stage1.tokenizer=$SRC/configs/default/decoder/tokenizer.json" --set stage1.batch_queries=4 \
  --set stage1.steps=1 --stage 1 2> train.log || { cat train.log; exit 1; }
TOWER=run/final/query_tower
printf '%s\n' "apple river stone" "x" "héllo wörld" > texts.txt
"$BUILD/encode_queries" $TOWER < texts.txt > want.txt

# Shared: pkg-config --cflags --libs, found at run time through the prefix's lib folder.
$CC "$SRC/examples/encode_queries.c" $(pkg-config --cflags --libs scalingnote) -lm -o shared_example
LD_LIBRARY_PATH=$(pkg-config --variable=libdir scalingnote) ./shared_example $TOWER < texts.txt > shared.txt
cmp want.txt shared.txt || { echo "FAIL: the pkg-config (shared) build embeds differently"; diff want.txt shared.txt; exit 1; }
echo "ok: pkg-config, shared library"
# Static: the one archive and pkg-config's Libs.private, no libscalingnote.so needed.
LIBDIR=$(pkg-config --variable=libdir scalingnote)
$CC "$SRC/examples/encode_queries.c" $(pkg-config --cflags scalingnote) "$LIBDIR/libscalingnote.a" \
  $(pkg-config --libs --static scalingnote | sed 's/-lscalingnote//') -lm -o static_example 2> static.log ||
  { cat static.log; exit 1; }
! ldd static_example | grep -q libscalingnote || { echo "FAIL: the static build loads libscalingnote.so"; exit 1; }
./static_example $TOWER < texts.txt > static.txt
cmp want.txt static.txt || { echo "FAIL: the static build embeds differently"; exit 1; }
echo "ok: pkg-config --static, libscalingnote.a"
# CMake: find_package(scalingnote) and its imported target.
mkdir consumer
cp "$SRC/examples/encode_queries.c" consumer/
cat > consumer/CMakeLists.txt <<'CMAKE'
cmake_minimum_required(VERSION 3.25)
project(consumer LANGUAGES C)
find_package(scalingnote 0.1 REQUIRED)
add_executable(encode_queries encode_queries.c)
target_link_libraries(encode_queries PRIVATE scalingnote::scalingnote m)
CMAKE
cmake -S consumer -B consumer/build -DCMAKE_PREFIX_PATH="$WORK/prefix" > cmake.log 2>&1 || { cat cmake.log; exit 1; }
cmake --build consumer/build > cmake.log 2>&1 || { cat cmake.log; exit 1; }
consumer/build/encode_queries $TOWER < texts.txt > cmake.txt
cmp want.txt cmake.txt || { echo "FAIL: the find_package build embeds differently"; exit 1; }
echo "ok: find_package(scalingnote)"
# Only the C API leaves the shared library.
SO=$(find "$WORK/prefix" -name 'libscalingnote.so.*.*')
exported=$(nm -D --defined-only "$SO" | awk '{print $3}' | sort | tr '\n' ' ')
api=$(grep -o '^SN_ENCODER_API [a-z_ *]*(' "$SRC/include/scalingnote/encoder.h" | grep -o '[a-z_]*($' | tr -d '(' |
      sort | tr '\n' ' ')
[ "$exported" = "$api" ] || { echo "FAIL: exported '$exported', encoder.h declares '$api'"; exit 1; }
echo "ok: libscalingnote.so exports $api"
