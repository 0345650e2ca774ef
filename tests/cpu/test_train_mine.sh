#!/usr/bin/env bash
# Mining rounds inside stage 1 (stage1.mine): every 3 steps the towers mine new negatives for the
# training data (RUN/mined/round_<r>.jsonl, never a positive, the configured count, ranks and
# margin), and training continues on them (also with stage1.mine.rounds); runs stopped mid-round (step 4), exactly at a round's
# boundary (step 3, so the resume mines it) and resumed give byte-identical final towers and the
# same metrics as an uninterrupted run; the mined rounds are byte-identical too. Against a corpus
# file as well, and bad mining keys exit 2.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
set +e  # each check records its failure and the test goes on
source "$SRC/tests/cpu/tiny_run.sh"
tiny_run_setup 8 1
MINE='--set stage1.mine.every_steps=3 --set stage1.mine.range_lo=2 --set stage1.mine.range_hi=12 --set stage1.mine.negatives=3'
train() { "$BUILD/sn_train" --config cfg.json $MINE --stage 1 "$@"; }
fail=0
FAIL() { echo "FAIL: $*"; fail=1; }
train --set run_dir=straight 2> straight.log || { tail -5 straight.log; exit 1; }
grep -q "mining round 2" straight.log || FAIL "no second mining round: $(grep -i mining straight.log)"
[ -s straight/mined/round_1.jsonl ] && [ -s straight/mined/round_2.jsonl ] || FAIL "the rounds' files are missing"
[ -e straight/mined/round_3.jsonl ] && FAIL "a round after the last step"
python3 - <<'PY' || FAIL "round contents"
import json
src = [json.loads(l) for l in open("data/train.jsonl")]
def forms(d):
    t, x = (d.get("title", ""), d["text"]) if isinstance(d, dict) else ("", d)
    return {x, f"{t} {x}"} if t else {x}
for r in (1, 2):
    got = [json.loads(l) for l in open(f"straight/mined/round_{r}.jsonl")]
    assert len(got) == len(src), (r, len(got))
    for a, b in zip(src, got):
        assert a["query"] == b["query"] and a["pos"] == b["pos"]
        assert len(b["neg"]) == 3, (r, b)
        pos = set().union(*(forms(p) for p in a["pos"]))
        assert not any(forms(n) & pos for n in b["neg"]), (r, "a positive mined")
r1 = open("straight/mined/round_1.jsonl").read()
assert r1 != open("straight/mined/round_2.jsonl").read(), "rounds 1 and 2 are identical"
print("ok: 2 rounds, 3 negatives per line, no positive")
PY
# Training reads the mined data: the same run without mining agrees up to step 3 and not after.
"$BUILD/sn_train" --config cfg.json --stage 1 --set run_dir=plain 2> plain.log || FAIL "plain run: $(tail -3 plain.log)"
python3 - <<'PY' || FAIL "mined negatives do not change the training"
import json
a = [json.loads(l)["loss"] for l in open("straight/metrics.jsonl")]
b = [json.loads(l)["loss"] for l in open("plain/metrics.jsonl")]
assert a[:3] == b[:3], (a[:3], b[:3])
assert all(x != y for x, y in zip(a[3:], b[3:])), (a[3:], b[3:])
print("ok: steps 4.. train on the mined negatives")
PY
for stop in 4 3; do
  train --set run_dir=stop$stop --stop-after $stop 2> stop$stop.log || { tail -3 stop$stop.log; FAIL "stop $stop"; }
  train --set run_dir=stop$stop --resume auto 2> resume$stop.log || { tail -3 resume$stop.log; FAIL "resume $stop"; }
  grep -q "resume: stage 1, step $stop" resume$stop.log || FAIL "stop $stop: did not resume at step $stop"
  same_run straight stop$stop "stopped at step $stop and resumed" && echo "ok: stopped at step $stop, resumed: identical"
  for r in 1 2; do
    cmp -s straight/mined/round_$r.jsonl stop$stop/mined/round_$r.jsonl || FAIL "stop $stop: round $r differs"
  done
done
grep -q "mining round 1" resume3.log || FAIL "the resume at a round's boundary did not mine it"
grep -q "mining round 1" resume4.log && FAIL "the resume mid-round 1 mined it again"

# A corpus file: the training documents plus others; the mined ids come from it.
python3 - <<'PY'
import json
with open("corpus.jsonl", "w") as f:
    n = 0
    for line in open("data/train.jsonl"):
        for d in json.loads(line)["pos"]:
            t, x = (d.get("title", ""), d["text"]) if isinstance(d, dict) else ("", d)
            f.write(json.dumps({"_id": f"p{n}", "title": t, "text": x}) + "\n"); n += 1
    for line in open("data/test/corpus.jsonl"):
        r = json.loads(line); f.write(json.dumps({"_id": "t" + r["_id"], "title": r.get("title", ""), "text": r["text"]}) + "\n")
PY
train --set run_dir=corpus --set stage1.mine.corpus=corpus.jsonl --set stage1.steps=4 \
  --set stage1.mine.margin_kind=absolute --set stage1.mine.margin=-1 2> corpus.log || FAIL "corpus run: $(tail -3 corpus.log)"
python3 -c "
import json
ids = {json.loads(l)['_id'] for l in open('corpus.jsonl')}
for l in open('corpus/mined/round_1.jsonl'):
    assert set(json.loads(l)['neg_ids']) <= ids
print('ok: the corpus file round')" || FAIL "corpus round ids"
# stage1.mine.rounds = 2 over 8 steps: rounds before steps 3 and 5 (every 8 / 3 = 2 steps), no third.
train --set run_dir=rounds --set stage1.mine.every_steps=0 --set stage1.mine.rounds=2 2> rounds.log || FAIL "rounds run: $(tail -3 rounds.log)"
[ -s rounds/mined/round_1.jsonl ] && [ -s rounds/mined/round_2.jsonl ] && [ ! -e rounds/mined/round_3.jsonl ] \
  || FAIL "stage1.mine.rounds=2: $(ls rounds/mined)"
grep -q "mining round 1" rounds.log && ! grep -q "mining round 3" rounds.log || FAIL "rounds log: $(grep mining rounds.log)"

EXPECT_BIN=$BUILD/sn_train
f=$fail
source "$SRC/tests/cpu/expect_exit2.sh"
fail=$f
expect "range" "'stage1.mine.range_hi' (2) must exceed" --config cfg.json --set stage1.mine.every_steps=1 --set stage1.mine.range_lo=2 --set stage1.mine.range_hi=2
expect "negatives" "'stage1.mine.negatives' (9) exceeds" --config cfg.json --set stage1.mine.every_steps=1 --set stage1.mine.range_lo=0 --set stage1.mine.range_hi=5 --set stage1.mine.negatives=9
expect "every and rounds" "are exclusive" --config cfg.json --set stage1.mine.every_steps=1 --set stage1.mine.rounds=2
expect "kd" "use one or the other" --config cfg.json --set stage1.mine.every_steps=1 --set stage1.kd_weight=1
expect "past the corpus" "ends past the corpus" --config cfg.json --set run_dir=past --set stage1.mine.every_steps=1 --set stage1.mine.range_hi=100000
exit $fail
