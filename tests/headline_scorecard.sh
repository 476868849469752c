#!/usr/bin/env bash
# bench/headline_scorecard.py on made-up results whose ratios and verdicts this test works out
# itself: goals met, missed and met exactly at the bound, a missing run, the replay's ceilings and
# tensor counts. Also bench/headline.sh's checks of its flags (exit 2, one line naming the flag).
# Usage: headline_scorecard.sh (no arguments; needs /usr/bin/python3)
set -uo pipefail
bench="$(cd "$(dirname "${BASH_SOURCE[0]}")/../bench" && pwd)"
python=/usr/bin/python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "ok: $*"; }

out="$work/run"
mkdir -p "$out/1gbit" "$out/100mbit" "$out/accuracy" "$out/replay"
cat >"$out/1gbit/results.json" <<'EOF'
{"medians": {"1gbit": {
  "adtopk-safusion": {"ratio_to_ddp": 2.5, "ratio_to_sync_none": 0.75},
  "ef-adtopk-safusion": {"ratio_to_ddp": 2.25, "ratio_to_sync_none": 0.675},
  "default": {"ratio_to_ddp": 1.5, "ratio_to_sync_none": 0.5}}}}
EOF
# The 100 Mbit/s default run failed: no ratio.
cat >"$out/100mbit/results.json" <<'EOF'
{"medians": {"100mbit": {"adtopk-safusion": {"ratio_to_ddp": 4.5},
                         "default": {"ratio_to_ddp": null}}}}
EOF
echo '{"test_accuracy": 0.8800}' >"$out/accuracy/dense.json"
echo '{"test_accuracy": 0.8750}' >"$out/accuracy/ef-topk.json"
echo '{"test_accuracy": 0.8600}' >"$out/accuracy/adtopk.json"
echo '{"test_accuracy": 0.8900}' >"$out/accuracy/ef-adtopk.json"
# (no ef-dgc.json: that run is missing)
cat >"$out/replay/replay.json" <<'EOF'
{"run": {}, "records": [
  {"model": "m1", "fusion": "none", "iteration_ms": 1000, "backward_ms": 400, "tensors_missing": 0},
  {"model": "m1", "fusion": "omgs", "iteration_ms": 600, "backward_ms": 400, "tensors_missing": 3,
   "missing_percent": 10.0},
  {"model": "m1", "fusion": "safusion", "iteration_ms": 500, "backward_ms": 400, "tensors_missing": 0},
  {"model": "m2", "fusion": "none", "iteration_ms": 900, "backward_ms": 800, "tensors_missing": 0},
  {"model": "m2", "fusion": "omgs", "iteration_ms": 850, "backward_ms": 800, "tensors_missing": 0,
   "missing_percent": 0.0},
  {"model": "m2", "fusion": "safusion", "iteration_ms": 840, "backward_ms": 800, "tensors_missing": 2},
  {"model": "m3", "fusion": "none", "iteration_ms": 1497, "backward_ms": 900, "tensors_missing": 0},
  {"model": "m3", "fusion": "omgs", "iteration_ms": 1200, "backward_ms": 900, "tensors_missing": 0},
  {"model": "m3", "fusion": "safusion", "iteration_ms": 1000, "backward_ms": 900, "tensors_missing": 0}
]}
EOF

if "$python" "$bench/headline_scorecard.py" "$out" >"$work/table.md" 2>"$work/err"; then
  ok "scorecard over made-up results exits 0"
else
  fail "scorecard exited non-zero: $(cat "$work/err")"
fi
if "$python" - "$out" <<'PY'
import json, sys
out = sys.argv[1]
records = json.load(open(f"{out}/headline.json"))
by_claim = {r["claim"]: r for r in records}
# (claim, measured, goal, ceiling, verdict), worked out by hand from the inputs above.
want = [
    ("1 Gbit/s: adtopk-safusion samples/s vs PyTorch DDP", 2.5, 1.8, None, "met"),
    ("1 Gbit/s: adtopk-safusion samples/s vs `--sync none`", 0.75, 0.9, None, "missed"),
    ("1 Gbit/s: ef-adtopk-safusion samples/s vs PyTorch DDP", 2.25, None, None, "reported"),
    ("1 Gbit/s: ef-adtopk-safusion samples/s vs `--sync none`", 0.675, None, None, "reported"),
    ("1 Gbit/s: default samples/s vs PyTorch DDP", 1.5, None, None, "reported"),
    ("1 Gbit/s: default samples/s vs `--sync none`", 0.5, None, None, "reported"),
    ("100 Mbit/s: adtopk-safusion samples/s vs PyTorch DDP", 4.5, 5.0, None, "missed"),
    ("100 Mbit/s: ef-adtopk-safusion samples/s vs PyTorch DDP", None, None, None, "not measured"),
    ("100 Mbit/s: default samples/s vs PyTorch DDP", None, None, None, "not measured"),
    ("accuracy after 3 epochs: `ef(topk:density=0.01)` vs dense (88.00%)", -0.5, -1.0, None, "met"),
    ("accuracy after 3 epochs: `adtopk:density=0.01` vs dense (88.00%)", -2.0, -1.0, None, "missed"),
    ("accuracy after 3 epochs: `ef(dgc:density=0.01)` vs dense (88.00%)", None, -1.0, None,
     "not measured"),
    ("accuracy after 3 epochs: `ef(adtopk:density=0.01)` vs dense (88.00%)", 1.0, None, None,
     "reported"),
    # 1000 / 500 and 600 / 500; ceilings 1000 / 400 and 600 / 400. 1.2 is met at the bound.
    ("replay m1: safusion iterations/s vs `none`", 2.0, 1.5, 2.5, "met"),
    ("replay m1: safusion iterations/s vs `omgs`", 1.2, 1.2, 1.5, "met"),
    ("replay m1: tensors missing per step with safusion (omgs: 10.0%)", 0, 0, None, "met"),
    ("replay m2: safusion iterations/s vs `none`", 900 / 840, 1.5, 900 / 800, "missed"),
    ("replay m2: safusion iterations/s vs `omgs`", 850 / 840, 1.2, 850 / 800, "missed"),
    ("replay m2: tensors missing per step with safusion (omgs: 0.0%)", 2, 0, None, "missed"),
    ("replay m3: safusion iterations/s vs `none`", 1.497, 1.5, 1497 / 900, "missed"),
    ("replay m3: safusion iterations/s vs `omgs`", 1.2, 1.2, 1200 / 900, "met"),
    ("replay m3: tensors missing per step with safusion", 0, 0, None, "met"),
]
assert len(records) == len(want), [r["claim"] for r in records]
def close(a, b):
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1e-9)
for name, measured, goal, ceiling, verdict in want:
    r = by_claim.get(name)
    assert r is not None, f"no record '{name}' in {list(by_claim)}"
    assert close(r["measured"], measured), (name, r["measured"], measured)
    assert close(r["goal"], goal), (name, r["goal"], goal)
    assert close(r["ceiling"], ceiling), (name, r["ceiling"], ceiling)
    assert r["verdict"] == verdict, (name, r["verdict"], verdict)
md = open(f"{out}/headline.md").read()
assert "| replay m1: safusion iterations/s vs `omgs` | 1.20x | >= 1.20x | 1.50x | met |" in md, md
# Two decimals would show 1.497 as the goal it misses: three.
assert "| replay m3: safusion iterations/s vs `none` | 1.497x | >= 1.50x | 1.66x | **missed** |" in md, md
assert "| 1 Gbit/s: ef-adtopk-safusion samples/s vs `--sync none` | 0.68x | - | - | reported |" in md, md
assert "| 100 Mbit/s: adtopk-safusion samples/s vs PyTorch DDP | 4.50x | >= 5.00x | - | **missed** |" in md, md
assert "| accuracy after 3 epochs: `adtopk:density=0.01` vs dense (88.00%) | -2.00 | >= -1.00 | - | **missed** |" in md, md
PY
then
  ok "every claim's value, goal, ceiling and verdict, in headline.json and headline.md"
else
  fail "scorecard records"
fi
cmp -s "$work/table.md" "$out/headline.md" || fail "printed table differs from headline.md"

# Parts not run are left out; nothing at all is an error that names the fix.
mkdir -p "$work/only-replay/replay"
cp "$out/replay/replay.json" "$work/only-replay/replay/"
"$python" "$bench/headline_scorecard.py" "$work/only-replay" >/dev/null 2>&1 \
  && [[ "$(grep -c '^| replay' "$work/only-replay/headline.md")" == 9 ]] \
  && ! grep -q 'Gbit\|accuracy' "$work/only-replay/headline.md" \
  && ok "a folder with only the replay scores only the replay" \
  || fail "scorecard of a replay-only folder"
mkdir -p "$work/empty"
msg="$("$python" "$bench/headline_scorecard.py" "$work/empty" 2>&1)"
rc=$?
[[ $rc -ne 0 && "$msg" == *"holds no results"*"bench/headline.sh --out"* ]] \
  && ok "an empty folder: exit $rc, '$msg'" || fail "empty folder: exit $rc, '$msg'"

# bench/headline.sh rejects bad flags before running anything.
check_flag() {  # $1: expected text; rest: arguments
  local want="$1" msg rc
  shift
  msg="$("$bench/headline.sh" "$@" 2>&1)"
  rc=$?
  if [[ $rc == 2 && "$msg" == *"$want"* && "$(wc -l <<<"$msg")" == 1 ]]; then
    ok "headline.sh $*: $msg"
  else
    fail "headline.sh $*: exit $rc, '$msg' (wanted exit 2 and '$want')"
  fi
}
check_flag "--parts must be a comma-separated list of throughput, accuracy, replay" --parts speed
check_flag "--repeats must be a positive integer" --repeats 0
check_flag "frugal binary '$work/none' is missing" --frugal "$work/none"
check_flag "unknown argument '--fast'" --fast
check_flag "--out needs a value" --out

if ((failures > 0)); then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all headline scorecard checks passed"
