#!/usr/bin/env bash
# Smoke test of `frugal bench replay` (a benchmark, so no timing assertions beyond the pacing): a
# tiny shape file and ResNet-50 through every strategy on 2 thread-ranks and once through gloo
# processes; the outputs (--json, --markdown, --trace, --plot) hold what they promise; bad flags
# fail with exit 2 and a message naming them.
# Usage: replay_bench_smoke.sh path/to/frugal
set -uo pipefail
frugal="$1"
python=/usr/bin/python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# Backward order, as bench/shapes: the last layer first.
cat >"$work/tiny.txt" <<'EOF'
head.bias 10
head.weight 10 512
block2.bias 512
block2.weight 512 512
block1.bias 512
block1.weight 512 784
EOF

# --- Every strategy on two models, thread-ranks: records, ratios, counters, files.
plot=()
if "$python" -c "import matplotlib" 2>/dev/null; then plot=(--plot "$work/replay.svg"); fi
if ! timeout 300 "$frugal" bench replay --backend local --workers 2 \
     --model "$work/tiny.txt,resnet50" --fusion dense,none,bytes:1,omgs,safusion,ssfusion \
     --compress 'ef(topk:density=0.01)' --backward-ms 20 --steps 2 --profile-steps 2 \
     --json "$work/replay.json" --markdown "$work/replay.md" --trace "$work/tr" "${plot[@]}" \
     >"$work/local.log" 2>&1; then
  fail "local run exited non-zero:"; sed 's/^/    /' "$work/local.log"
fi
grep -q "^# replay resnet50: 161 tensors, 25557032 parameters" "$work/local.log" ||
  fail "no ResNet-50 table header in the output"
if ! "$python" - "$work" "${#plot[@]}" <<'PY'
import json, os, sys
work, plotted = sys.argv[1], sys.argv[2] != "0"
d = json.load(open(f"{work}/replay.json"))
run, records = d["run"], d["records"]
assert run["world_size"] == 2 and run["backend"] == "local" and run["warmup"] == 6, run
fusions = ["dense", "none", "bytes:1", "omgs", "safusion", "ssfusion"]
assert [(r["model"].split("/")[-1], r["fusion"]) for r in records] == \
    [(m, f) for m in ["tiny.txt", "resnet50"] for f in fusions], [r["fusion"] for r in records]
for r in records:
    name = f'{r["model"]} {r["fusion"]}'
    # Pacing: the last gradient is handed over at backward_ms, so no step can be shorter.
    assert r["iteration_ms"] >= r["backward_ms"] == 20, (name, r["iteration_ms"])
    assert abs(r["iterations_per_s"] * r["iteration_ms"] - 1e3) < 1e-6, name
    assert r["bytes_sent"] > 0 and r["num_buckets"] >= 1, name
    # A ring allreduce of n=2 sends (n-1)/n x 2 = 1x the gradient bytes.
    assert r["dense_wire_bytes"] == 4 * r["parameters"], (name, r["dense_wire_bytes"])
    assert abs(r["speedup_vs_none"] * r["iteration_ms"] -
               next(x["iteration_ms"] for x in records
                    if x["model"] == r["model"] and x["fusion"] == "none")) < 1e-6, name
    if r["fusion"] == "dense":
        assert r["compressor"] == "none" and r["missing_percent"] is None, name
        assert r["bytes_sent"] == r["dense_wire_bytes"], name
    else:
        assert r["compressor"].startswith("ef(topk:density=0.01"), (name, r["compressor"])
    if r["fusion"] == "none":
        # Compressed alone, top-k keeps at least one element of every tensor.
        assert r["tensors_compressed"] == r["tensors"] and r["tensors_missing"] == 0, name
    if r["fusion"] in ("omgs", "safusion", "ssfusion"):
        assert r["predicted_step_ms"] > 0 and r["link"]["latency_us"] > 0, name
    if r["fusion"] == "safusion":
        assert r["tensors_missing"] == 0, (name, r["tensors_missing"])
    if r["fusion"] == "none" and r["model"] == "resnet50":
        assert r["num_buckets"] == 161, r["num_buckets"]
md = open(f"{work}/replay.md").read()
assert md.count("| `safusion` |") == 2 and "**resnet50**" in md, md
for f in ["dense", "none", "bytes-1", "omgs", "safusion", "ssfusion"]:
    trace = json.load(open(f"{work}/tr.tiny.{f}.trace.json"))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    names = {e.get("name") for e in events if e.get("ph") == "X"}
    pids = {e.get("pid") for e in events if e.get("ph") == "X"}
    assert {"BACKWARD", "COMM", "WAIT"} <= names and pids == {0, 1}, (f, names, pids)
if plotted:
    assert open(f"{work}/replay.svg").read().lstrip().startswith("<?xml"), "--plot: no SVG"
print("ok: records, ratios, markdown, traces" + (" and plot" if plotted else ""))
PY
then fail "outputs of the local run"; fi

# --- Processes over gloo (the launcher path bench/cluster.sh and mpirun also take), each bound
# to its share of the CPUs: the debug log names each rank's CPUs, which must be the share
# (core/cpu_affinity.h) of this test's own CPU list, worked out here.
if ! FRUGAL_LOG_LEVEL=debug timeout 300 "$frugal" bench replay --workers 2 --bind-cores \
     --model "$work/tiny.txt" --steps 1 --backward-ms 5 --json "$work/gloo.json" \
     >"$work/gloo.log" 2>&1; then
  fail "gloo run exited non-zero:"; sed 's/^/    /' "$work/gloo.log"
elif ! "$python" -c "import json,sys; d=json.load(open(sys.argv[1])); \
assert [r['fusion'] for r in d['records']] == ['none','omgs','safusion'] and \
d['run']['backend'] == 'gloo' and d['records'][0]['dense_comm_ms'] > 0" "$work/gloo.json"; then
  fail "gloo run's JSON"
else
  echo "ok: gloo processes"
fi
want_binding="$("$python" - <<'PY'
import os
cpus = sorted(os.sched_getaffinity(0))
c, n = len(cpus), 2
for r in range(n):
    share = cpus[r * c // n:max(r * c // n + 1, (r + 1) * c // n)]
    runs = []
    for cpu in share:
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    text = ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
    print(f"--bind-cores: local rank {r} of {n} on CPUs {text}")
PY
)"
got_binding="$(grep -o -- '--bind-cores: local rank .*' "$work/gloo.log" | sort)"
if [[ "$got_binding" == "$want_binding" ]]; then
  echo "ok: --bind-cores on gloo processes: $(tr '\n' ';' <<<"$got_binding")"
else
  fail "--bind-cores: got '$got_binding', wanted '$want_binding'"
fi

# --- Bad input: exit 2, one line naming the flag and what is valid.
expect_error() {  # expect_error TEXT ARGS...: exits 2 and stderr contains TEXT
  local text="$1"; shift
  local out status
  out=$(timeout 60 "$frugal" bench replay --backend local --workers 1 "$@" 2>&1 >/dev/null)
  status=$?
  if [[ $status -ne 2 || "$out" != *"$text"* ]]; then
    fail "bench replay $* exited $status with '$out'; expected 2 and '$text'"
  else
    echo "ok: $* -> $text"
  fi
}
expect_error "'fast' is unknown; valid: none," --fusion none,fast
expect_error "; or dense (no compressor, bytes:25)" --fusion bytes:0
expect_error "nosuch" --model nosuch
expect_error "--backward-ms: '-3' is invalid; it must be 'auto' or milliseconds >= 0" \
  --backward-ms=-3
expect_error "--compress" --compress 'nosuch:density=0.1'
expect_error "--comm-ratio must be a number > 0" --comm-ratio 0

if [[ $failures -gt 0 ]]; then echo "$failures failure(s)"; exit 1; fi
echo "all replay bench checks passed"
