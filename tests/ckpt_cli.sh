#!/usr/bin/env bash
# `frugal ckpt inspect|verify` on directories without valid checkpoints: each case must exit with
# the documented code (2: DIR missing or not a directory; 1: nothing verified) and print a line
# naming the problem. Real checkpoints are covered at library level by ckpt_test (inspect_test.cc)
# until a command writes them. Usage: ckpt_cli.sh path/to/frugal
set -uo pipefail
frugal="$1"
python=/usr/bin/python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0

# expect CODE EXPECTED_SUBSTRING ARGS...
expect() {
  local code="$1" expected="$2"; shift 2
  local output actual
  output=$(timeout 60 "$frugal" "$@" 2>&1)
  actual=$?
  if [ "$actual" -ne "$code" ]; then
    echo "FAIL: frugal $* exited $actual, expected $code:"
    echo "$output" | sed 's/^/    /'
    failures=$((failures + 1))
  elif ! grep -qF -- "$expected" <<<"$output"; then
    echo "FAIL: frugal $*: output lacks '$expected':"
    echo "$output" | sed 's/^/    /'
    failures=$((failures + 1))
  else
    echo "ok: frugal $* -> exit $actual: $(grep -F -- "$expected" <<<"$output" | head -1)"
  fi
}

expect 2 "frugal: error: $work/nope: no such directory" ckpt verify "$work/nope"
expect 2 "frugal: error: $work/nope: no such directory" ckpt inspect "$work/nope"
touch "$work/file"
expect 2 "frugal: error: $work/file: not a directory" ckpt verify "$work/file"
expect 1 "frugal: error: no checkpoints in $work" ckpt verify "$work"
expect 0 "No committed checkpoints in $work" ckpt inspect "$work"
expect 0 "LATEST: (none)" ckpt inspect "$work"

# A save that never committed is listed, not verified.
mkdir "$work/step-000000020.tmp-run1"
expect 1 "no checkpoints in $work" ckpt verify "$work"
expect 0 "Unfinished saves: step-000000020.tmp-run1" ckpt inspect "$work"

# A committed step directory that lost its manifest.
mkdir "$work/step-000000010"
expect 1 "FAIL step-000000010: $work/step-000000010/MANIFEST: cannot open" ckpt verify "$work"
expect 1 "FAIL step-000000010: " ckpt verify "$work/step-000000010"
expect 0 "MANIFEST: cannot open" ckpt inspect "$work"

# --json prints one object with the same facts.
if ! "$frugal" ckpt inspect --json "$work" | "$python" -c '
import json, sys
d = json.load(sys.stdin)
assert d["latest"] is None and d["newest_valid"] is None, d
assert [c["step"] for c in d["checkpoints"]] == [10], d
assert "MANIFEST" in d["checkpoints"][0]["status"], d
assert d["unfinished"][0].endswith("step-000000020.tmp-run1"), d
'; then
  echo "FAIL: frugal ckpt inspect --json"
  failures=$((failures + 1))
else
  echo "ok: frugal ckpt inspect --json"
fi

expect 106 "A subcommand is required" ckpt

if [ "$failures" -gt 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
echo "all ckpt CLI checks passed"
