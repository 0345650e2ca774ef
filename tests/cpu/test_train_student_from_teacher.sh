#!/usr/bin/env bash
# stage2.student_from_teacher: the student is the stage-1 query tower's first N blocks. With all of
# them it *is* the teacher, so stage 2's first step (its losses are taken before the update) has
# MSE and 1 - cos of zero; the student is exported with the teacher's tokenizer; bad settings exit 2.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
source "$SRC/tests/cpu/tiny_run.sh"
tiny_run_setup 2 2
FROM=(--set stage2.student_desc= --set stage2.tokenizer= --set stage2.pooling=last)
"$BUILD/sn_train" --config cfg.json --stage 1 2> s1.log || { cat s1.log; exit 1; }
"$BUILD/sn_train" --config cfg.json --stage 2 "${FROM[@]}" --set stage2.student_from_teacher=1 2> s2.log ||
  { cat s2.log; exit 1; }
fail=0
python3 - <<'PY' || fail=1
import json
rows = [json.loads(l) for l in open("run/metrics.jsonl") if '"stage": 2' in l]
first = rows[0]
assert first["step"] == 1 and first["mse"] < 1e-9 and first["cos"] < 1e-6, f"the student is not the teacher: {first}"
print(f"ok: step 1 mse {first['mse']:.2e}, 1 - cos {first['cos']:.2e}")
PY
cmp -s run/final/student/tokenizer.json run/final/query_tower/tokenizer.json ||
  { echo "FAIL: the student's tokenizer is not the teacher's"; fail=1; }
grep -q '"num_hidden_layers": 1' run/final/student/config.json || { echo "FAIL: student config"; fail=1; }
set +e
EXPECT_BIN="$BUILD/sn_train"
source "$SRC/tests/cpu/expect_exit2.sh"
mkdir -p run2/final && cp -r run/final/query_tower run/final/doc_tower run2/final/
expect "more blocks than the teacher" "stage2.student_from_teacher = 2" --config cfg.json --stage 2 "${FROM[@]}" \
  --set run_dir=run2 --set stage2.student_from_teacher=2
expect "a student description as well" "leave 'stage2.student'" --config cfg.json --stage 2 --set stage2.student_from_teacher=1
expect "another pooling than the teacher's" "set 'stage2.pooling'" --config cfg.json --stage 2 --set stage2.student_desc= \
  --set stage2.tokenizer= --set stage2.student_from_teacher=1
exit $fail
