#!/usr/bin/env bash
# End-to-end checks of `frugal train` as a user runs it: the three backends follow the same loss
# curve; the outputs (--summary, --metrics, --trace) hold what they promise; a rank killed with
# SIGKILL makes the job fail within the timeout with an error naming it; Ctrl-C stops every rank;
# --bind-cores puts each rank's threads on its share of the CPUs.
# Usage: train_cli.sh path/to/frugal
set -uo pipefail
frugal="$1"
python=/usr/bin/python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# --- Same loss curve on gloo, mpi and local (4 workers, 20 steps, rank 0's loss every step).
common=(train --workers 4 --steps 20 --batch-size 16 --log-every 1 --no-eval --progress off)
backends=(gloo local)
if "$frugal" train --help >/dev/null && command -v mpirun >/dev/null; then backends+=(mpi); fi
for b in "${backends[@]}"; do
  if ! timeout 300 "$frugal" "${common[@]}" --backend "$b" --metrics "$work/$b.jsonl" \
       --summary "$work/$b.json" --trace "$work/$b.trace.json" >"$work/$b.log" 2>&1; then
    fail "--backend $b exited non-zero:"; sed 's/^/    /' "$work/$b.log"
  fi
done
if ! "$python" - "$work" "${backends[@]}" <<'PY'
import json, sys
work, backends = sys.argv[1], sys.argv[2:]
def losses(b):
    return [r["loss"] for r in map(json.loads, open(f"{work}/{b}.jsonl")) if r["type"] == "step"]
curves = {b: losses(b) for b in backends}
for b, c in curves.items():
    assert len(c) == 20, f"{b}: {len(c)} step records, expected 20"
    assert c[-1] < c[0] * 0.8, f"{b}: loss did not fall: {c[0]} -> {c[-1]}"
for b in backends[1:]:
    # Reduction order differs between backends (ring vs tree), so allow float rounding.
    worst = max(abs(x - y) / max(abs(x), 1e-6) for x, y in zip(curves["gloo"], curves[b]))
    assert worst < 1e-4, f"{b} differs from gloo by {worst:.2e} (relative)"
    print(f"ok: {b} loss curve matches gloo (max relative difference {worst:.1e})")
s = json.load(open(f"{work}/gloo.json"))
for key in ["samples_per_s", "wall_s", "bytes_sent_per_step", "dense_bytes_per_step", "steps",
            "world_size", "config"]:
    assert key in s, f"summary lacks {key}"
assert s["steps"] == 20 and s["world_size"] == 4 and s["config"]["batch_size"] == 16, s
assert s["dense_bytes_per_step"] == 4 * 5824522, s["dense_bytes_per_step"]
trace = json.load(open(f"{work}/gloo.trace.json"))
events = trace["traceEvents"] if isinstance(trace, dict) else trace
pids = {e.get("pid") for e in events if e.get("ph") == "X"}
names = {e.get("name") for e in events if e.get("ph") == "X"}
assert pids == {0, 1, 2, 3}, f"trace ranks {pids}"
assert {"FORWARD", "BACKWARD", "COMM", "OPTIMIZER"} <= names, f"trace phases {names}"
print("ok: summary and trace hold every rank and phase")
PY
then fail "loss curves or outputs"; fi

# --- A rank killed mid-training: the job exits non-zero, naming it, within the timeout.
rank_pid() {  # rank_pid PARENT RANK: the child of PARENT whose environment has RANK=<rank>
  for child in $(pgrep -P "$1"); do
    if tr '\0' '\n' <"/proc/$child/environ" 2>/dev/null | grep -qx "RANK=$2"; then
      echo "$child"; return
    fi
  done
}
long=(train --workers 3 --backend gloo --dataset synthetic --steps 100000 --batch-size 8
      --progress lines --log-every 1 --timeout-ms 20000)
"$frugal" "${long[@]}" >"$work/kill.log" 2>&1 &
parent=$!
for _ in $(seq 300); do grep -q "^step 3/" "$work/kill.log" && break; sleep 0.2; done
victim=$(rank_pid "$parent" 1)
start=$SECONDS
if [ -z "$victim" ]; then
  fail "no rank 1 process under $parent"; kill -9 "$parent"
else
  kill -9 "$victim"
fi
wait "$parent"; code=$?
if [ "$code" -ne 1 ]; then fail "job with a killed rank exited $code, expected 1"; fi
if ! grep -q "rank 1 was killed by signal 9" "$work/kill.log"; then
  fail "error does not name the killed rank:"; tail -5 "$work/kill.log" | sed 's/^/    /'
else
  echo "ok: killed rank 1 -> exit $code after $((SECONDS - start)) s: $(grep -m1 'rank 1 was killed' "$work/kill.log")"
fi

# --- Ctrl-C (SIGINT to the whole foreground group): every rank stops, exit 130.
setsid "$frugal" "${long[@]}" >"$work/int.log" 2>&1 &
leader=$!
for _ in $(seq 300); do grep -q "^step 3/" "$work/int.log" && break; sleep 0.2; done
kill -INT -- "-$leader"
wait "$leader"; code=$?
sleep 0.5
left=$(pgrep -g "$leader" | wc -l)
if [ "$code" -ne 130 ] || [ "$left" -ne 0 ]; then
  fail "Ctrl-C: exit $code (expected 130), $left processes left"; tail -3 "$work/int.log"
else
  echo "ok: Ctrl-C -> exit 130, no rank left: $(grep -m1 interrupted "$work/int.log")"
fi

# --- --bind-cores: every thread of local rank r runs on the r-th share of the CPUs this job may
# use (contiguous runs of cpus[r*C/N, (r+1)*C/N), one CPU each with more ranks than CPUs), read
# from the kernel's view of each thread. gloo: one process per rank; local: one thread per rank.
expand_cpus() {  # expand_cpus "0-2,5" -> 0,1,2,5
  "$python" -c 'import sys
cpus = []
for part in sys.argv[1].split(","):
    lo, _, hi = part.partition("-")
    cpus += range(int(lo), int(hi or lo) + 1)
print(",".join(map(str, cpus)))' "$1"
}
IFS=, read -ra allowed <<<"$(expand_cpus "$(grep Cpus_allowed_list /proc/self/status | cut -f2)")"
expected_share() {  # expected_share RANK N: the CPU list rank RANK of N should be bound to
  local c=${#allowed[@]} begin end
  begin=$(($1 * c / $2)); end=$((($1 + 1) * c / $2))
  ((end < begin + 1)) && end=$((begin + 1))
  local share="${allowed[*]:begin:end-begin}"
  echo "${share// /,}"
}
thread_cpus() {  # thread_cpus PID: each thread's CPU list, expanded, one line per thread
  for status in /proc/"$1"/task/*/status; do
    expand_cpus "$(grep Cpus_allowed_list "$status" | cut -f2)"
  done
}
bind=(train --workers 3 --dataset synthetic --steps 100000 --batch-size 8 --progress lines
      --log-every 1 --bind-cores)
"$frugal" "${bind[@]}" --backend gloo >"$work/bind.log" 2>&1 &
parent=$!
for _ in $(seq 300); do grep -q "^step 3/" "$work/bind.log" && break; sleep 0.2; done
for r in 0 1 2; do
  pid=$(rank_pid "$parent" "$r")
  want=$(expected_share "$r" 3)
  got=$(thread_cpus "$pid" | sort -u | tr '\n' ' ')
  if [ -z "$pid" ] || [ "$got" != "$want " ]; then
    fail "--bind-cores gloo rank $r (pid ${pid:-none}): threads on [$got], expected [$want]"
  else
    echo "ok: --bind-cores gloo rank $r: all threads on CPUs $want"
  fi
done
kill "$parent"; wait "$parent" 2>/dev/null
"$frugal" "${bind[@]}" --backend local >"$work/bind-local.log" 2>&1 &
pid=$!
for _ in $(seq 300); do grep -q "^step 3/" "$work/bind-local.log" && break; sleep 0.2; done
seen=$(thread_cpus "$pid" | sort -u)
before=$failures
for r in 0 1 2; do
  want=$(expected_share "$r" 3)
  if ! grep -qx "$want" <<<"$seen"; then
    fail "--bind-cores local: no thread on rank $r's CPUs [$want]; threads on: $(tr '\n' ' ' <<<"$seen")"
  fi
done
((failures == before)) && echo "ok: --bind-cores local: thread CPU lists $(tr '\n' ' ' <<<"$seen")"
kill "$pid"; wait "$pid" 2>/dev/null

# --- The default --threads counts the CPUs the job may use (nproc honours the affinity mask too).
first_cpu=$(grep Cpus_allowed_list /proc/self/status | cut -f2 | cut -d, -f1 | cut -d- -f1)
for mask in "" "taskset -c $first_cpu"; do
  $mask "$frugal" train --workers 1 --steps 1 --dataset synthetic --no-eval --progress off \
    --summary "$work/threads.json" >/dev/null 2>&1
  want=$($mask nproc)
  got=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["config"]["threads"])' \
        "$work/threads.json" 2>/dev/null)
  if [ "$got" != "$want" ]; then
    fail "default --threads under '${mask:-no mask}': $got, expected nproc = $want"
  else
    echo "ok: default --threads under '${mask:-no mask}' is nproc = $want"
  fi
done

echo "train_cli: $failures failure(s)"
[ "$failures" -eq 0 ]
