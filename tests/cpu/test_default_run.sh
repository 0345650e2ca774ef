#!/usr/bin/env bash
# README's first command, shortened: sn_default_run builds the Debian dataset and runs both stages
# and the three evaluations (a few steps each; the full run is measured in docs/PERFORMANCE.md).
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
ls /var/lib/apt/lists/*_i18n_Translation-en* >/dev/null 2>&1 || {
  echo "SKIP: no English translation lists (apt-get update -o Acquire::Languages=en)"; exit 77; }
"$BUILD/sn_default_run" --set run_dir="$WORK/run" --set stage1.steps=4 --set stage2.steps=4 \
  --set stage1.optim.warmup_steps=1 --set stage2.optim.warmup_steps=1 > "$WORK/out" 2> "$WORK/log" || {
  tail -20 "$WORK/log"; exit 1; }
cat "$WORK/out"
for row in "untrained towers" "stage-1 towers" "student + stage-1 docs" "BM25" "student / teacher"; do
  grep -q "$row" "$WORK/out" || { echo "FAIL: the summary lacks '$row'"; exit 1; }
done
for f in final/query_tower/model.safetensors final/doc_tower/model.safetensors final/student/model.safetensors \
         final/student/tokenizer.json loss_stage1.svg loss_stage2.svg; do
  [ -s "$WORK/run/$f" ] || { echo "FAIL: $f missing"; exit 1; }
done
echo "test_default_run: ok"
