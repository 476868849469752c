#!/usr/bin/env bash
# Smoke test of `frugal bench ckpt` (a benchmark, so no timing targets asserted): a tiny state
# through the baseline, sync and async modes and three restores; the markdown table, --json and
# --plot hold what they promise, the restore check passed, the run's directory is removed, and
# bad flags fail with exit 2 and a message naming them.
# Usage: ckpt_bench_smoke.sh path/to/frugal
set -uo pipefail
frugal="$1"
python=/usr/bin/python3
work=$(mktemp -d /var/tmp/ckpt-bench-smoke-XXXXXX)
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

plot=()
if "$python" -c "import matplotlib" 2>/dev/null; then plot=(--plot "$work/ckpt.svg"); fi
if ! timeout 60 "$frugal" bench ckpt --parameters 2e6 --saves 2 --forward-ms 20 \
     --backward-ms 40 --dir "$work/runs" --json "$work/ckpt.json" --trace "$work/tr" "${plot[@]}" \
     >"$work/out.md" 2>"$work/err.log"; then
  fail "run exited non-zero:"; sed 's/^/    /' "$work/out.md" "$work/err.log"
fi
for text in "| mode | stall p50 (ms)" "| sync |" "| async |" "| none |" \
            "| async stall p50 / sync save() p50 |" "Restore check: passed"; do
  grep -qF -- "$text" "$work/out.md" || fail "no '$text' in the table"
done
if ! "$python" - "$work" "${#plot[@]}" <<'PY'
import json, os, sys
work, plotted = sys.argv[1], sys.argv[2] != "0"
d = json.load(open(f"{work}/ckpt.json"))
run = d["run"]
assert run["parameters"] == 2_000_000 and run["moments"] == 2 and run["ranks"] == 2, run
assert run["state_bytes"] == 24_000_000, run["state_bytes"]
assert run["steps_between_saves"] >= 2 and run["steps_between_saves_auto"], run
assert [m["mode"] for m in d["modes"]] == ["none", "sync", "async"], d["modes"]
for m in d["modes"]:
    assert m["steps"] == 2 * run["steps_between_saves"] + 1, m
    # The windows are real work, sized by a calibration that a busy machine can skew a bit.
    assert m["step_mean_ms"] > 0.5 * 60, m
    if m["mode"] == "none":
        assert m["stall_ms"] == [] and m["step_change_percent"] is None, m
        continue
    assert len(m["stall_ms"]) == 2 and m["stall_p99_ms"] >= m["stall_p50_ms"] > 0, m
    assert m["persist_bytes"] >= run["state_bytes"], m  # shards add headers and footers
    assert len(m["persist_ms"]) == 2 and min(m["persist_ms"]) > 0, m
    assert m["persist_gbps"] > 0 and m["persist_vs_disk"] > 0, m
    trace = json.load(open(f'{work}/tr.{m["mode"]}.trace.json'))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    names = {e.get("name") for e in events if e.get("ph") == "X"}
    pids = {e.get("pid") for e in events if e.get("ph") == "X"}
    assert {"FORWARD", "BACKWARD", "PERSIST"} <= names and pids == {0, 1}, (m["mode"], names)
assert [x["when"] for x in d["disk"]] == ["before", "between", "after"], d["disk"]
assert sorted(x["gbps"] for x in d["disk"])[1] == d["disk_gbps"], d["disk"]
assert [(r["ranks"], r["cache"]) for r in d["restores"]] == [(2, "cold"), (2, "warm"), (3, "cold")]
for r in d["restores"]:
    assert r["verified"] and r["step"] == 2 * run["steps_between_saves"], r
    assert r["bytes"] == run["state_bytes"] and r["gbps"] > 0, r
assert d["restore_check"] == "passed"
t = d["targets"]
assert t["stall_ratio"] > 0 and t["persist_ratio"] > 0 and isinstance(t["stall_met"], bool), t
# The run's own directory is gone (no --keep-files).
assert not os.path.exists(run["dir"]) and os.listdir(f"{work}/runs") == [], run["dir"]
if plotted:
    assert open(f"{work}/ckpt.svg").read().lstrip().startswith("<?xml"), "--plot: no SVG"
print("ok: table, records, restores" + (" and plot" if plotted else ""))
PY
then fail "outputs of the run"; fi

# --- A save every step (the last save is the one before the final step), one rank.
if ! timeout 60 "$frugal" bench ckpt --parameters 1e5 --ranks 1 --saves 1 \
     --steps-between-saves 1 --forward-ms 1 --backward-ms 1 --dir "$work/runs" \
     --json "$work/every.json" >"$work/every.md" 2>&1; then
  fail "--steps-between-saves 1 run exited non-zero:"; sed 's/^/    /' "$work/every.md"
elif ! "$python" -c "import json,sys; d=json.load(open(sys.argv[1])); \
assert [m['steps'] for m in d['modes']] == [2, 2, 2] and \
[len(m['stall_ms']) for m in d['modes']] == [0, 1, 1] and \
[r['ranks'] for r in d['restores']] == [1, 1, 2] and \
all(r['step'] == 1 for r in d['restores'])" "$work/every.json"; then
  fail "--steps-between-saves 1 run's JSON"
else
  echo "ok: a save every step on one rank"
fi

# --- Bad input: exit 2, one line naming the flag and what is valid.
expect_error() {  # expect_error TEXT ARGS...: exits 2 and stderr contains TEXT
  local text="$1"; shift
  local out status
  out=$(timeout 60 "$frugal" bench ckpt --dir "$work/bad" "$@" 2>&1 >/dev/null)
  status=$?
  if [[ $status -ne 2 || "$out" != *"$text"* ]]; then
    fail "bench ckpt $* exited $status with '$out'; expected 2 and '$text'"
  else
    echo "ok: $* -> $text"
  fi
}
expect_error "--moments 3 is invalid; it must be 0, 1 or 2" --moments 3
expect_error "--parameters 1.5 is invalid; it must be a whole number" --parameters 1.5
expect_error "--ranks 0 is invalid; it must be from 1 to 64" --ranks 0
expect_error "--saves 0 is invalid" --saves 0
expect_error "--forward-ms -1 is invalid; it must be from 0 to 60000" --forward-ms=-1
expect_error "--steps-between-saves often is invalid; it must be 'auto' or" \
  --steps-between-saves often
expect_error "--chunk-bytes 1024 is invalid; it must be from 4K to 1G" --chunk-bytes 1K
expect_error "needs about" --parameters 5e10
[[ -e "$work/bad" ]] && fail "a rejected run created its directory"

if [[ $failures -gt 0 ]]; then echo "$failures failure(s)"; exit 1; fi
echo "all ckpt bench checks passed"
