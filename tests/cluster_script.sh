#!/usr/bin/env bash
# Checks bench/cluster.sh as a user runs it: bad input fails with one line; every rank sees its
# environment and address; the links carry their --rate (measured with a TCP stream, each way
# and into one host from three); a failing rank stops the job at once, naming it; SIGINT and
# SIGKILL leave no namespace or rank process behind (the next run removes a killed run's).
# Then bench/cluster_compare.sh end to end with a stand-in for frugal.
# Needs root (network namespaces); prints SKIP and exits 0 without it. About 20 s.
# Usage: tests/cluster_script.sh
set -uo pipefail
cluster="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/bench/cluster.sh"
python=/usr/bin/python3
prefix=frgt
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "ok: $*"; }

if ((EUID != 0)) || ! ip netns add "${prefix}probe" 2>/dev/null; then
  echo "SKIP: needs root and network namespaces"
  exit 0
fi
ip netns delete "${prefix}probe"

leftovers() {  # namespaces or processes of ours that outlived a run
  ip netns list | awk '{print $1}' | grep -E "^${prefix}([0-9]+|sw)\$"
  pgrep -f "^cluster-test-marker" || true
}

# --- Bad input: one line naming the problem, non-zero exit, nothing created.
expect_error() {  # $1: expected text, then the arguments
  local want="$1" out rc
  shift
  out="$("$cluster" "$@" 2>&1)"
  rc=$?
  if ((rc == 0)) || [[ "$out" != *"$want"* ]] || (($(wc -l <<<"$out") != 1)); then
    fail "cluster.sh $* -> exit $rc, '$out' (wanted one line with '$want')"
  else
    ok "cluster.sh $* -> $out"
  fi
}
expect_error "unknown flag '--bogus'" --bogus --ranks 2 --rate 1gbit -- true
expect_error "no command given" --ranks 2 --rate 1gbit --prefix "$prefix"
expect_error "--rate 'fast'" --ranks 2 --rate fast -- true
expect_error "--rate is required" --ranks 2 -- true
expect_error "--ranks must be" --ranks 0 --rate 1gbit -- true
expect_error "--delay '3'" --ranks 2 --rate 1gbit --delay 3 -- true
expect_error "--cpus must be pinned or shared" --ranks 2 --rate 1gbit --cpus all -- true
if command -v setpriv >/dev/null; then
  out="$(setpriv --reuid=65534 --regid=65534 --clear-groups "$cluster" --ranks 2 --rate 1gbit \
           -- true 2>&1)"
  rc=$?
  if ((rc != 0)) && [[ "$out" == *"must run as root"* ]]; then
    ok "as nobody -> $out"
  else
    fail "as nobody: exit $rc, '$out'"
  fi
fi

# --- Environment and addresses.
# shellcheck disable=SC2016  # $0 is expanded by each rank's shell
if "$cluster" --ranks 3 --rate 1gbit --prefix "$prefix" --log-dir "$work/env" -- \
     sh -c 'env > "$0/env-{rank}"; ip -4 -o addr show eth0 >> "$0/env-{rank}"' "$work" \
     >/dev/null 2>&1; then
  for r in 0 1 2; do
    f="$work/env-$r"
    for want in "RANK=$r" WORLD_SIZE=3 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 MASTER_ADDR=10.77.0.1 MASTER_PORT=29511 \
                GLOO_SOCKET_IFNAME=eth0 FRUGAL_SOCKET_IFNAME=eth0 "inet 10.77.0.$((r + 1))/24"; do
      grep -q -- "$want" "$f" 2>/dev/null || fail "rank $r: '$want' missing from its environment"
    done
  done
  ok "3 ranks: RANK, WORLD_SIZE, MASTER_*, *_SOCKET_IFNAME and eth0 addresses as documented"
else
  fail "the environment run exited non-zero"
fi

# --- CPUs: pinned by default, host r on the CPUs i (of the script's list) with i % N == r, or on
# CPU r % C when the hosts outnumber the C CPUs; --cpus shared leaves every host on all of them.
expand_cpus() {  # taskset -c -p output on stdin -> one CPU per line ("0-2,5" -> 0 1 2 5)
  sed 's/.*: //' | tr ',' '\n' | awk -F- '{ for (c = $1; c <= ($2 == "" ? $1 : $2); c++) print c }'
}
mapfile -t all_cpus < <(taskset -c -p $$ | expand_cpus)
expected_cpus() {  # $1: rank, $2: hosts -> "0,2" style list
  local r="$1" n="$2" c="${#all_cpus[@]}" i out=""
  if ((n >= c)); then echo "${all_cpus[r % c]}"; return; fi
  for ((i = r; i < c; i += n)); do out+="${out:+,}${all_cpus[i]}"; done
  echo "$out"
}
check_cpus() {  # $1: hosts, $2: --cpus mode
  local n="$1" mode="$2" r want got before="$failures"
  # shellcheck disable=SC2016  # $0 is expanded by each rank's shell
  if ! "$cluster" --ranks "$n" --rate 1gbit --cpus "$mode" --prefix "$prefix" \
       --log-dir "$work/cpus" -- sh -c 'taskset -c -p $$ > "$0/cpus-{rank}"' "$work" \
       >/dev/null 2>&1; then
    fail "the --cpus $mode run with $n hosts exited non-zero"
    return
  fi
  for ((r = 0; r < n; r++)); do
    got="$(expand_cpus <"$work/cpus-$r" | paste -sd,)"
    if [[ "$mode" == pinned ]]; then want="$(expected_cpus "$r" "$n")"; else
      want="$(IFS=,; echo "${all_cpus[*]}")"
    fi
    [[ "$got" == "$want" ]] || fail "--cpus $mode, $n hosts: rank $r runs on '$got', wanted '$want'"
  done
  ((failures == before)) && ok "--cpus $mode, $n hosts on ${#all_cpus[@]} CPUs: each rank on its documented CPUs"
}
check_cpus 1 pinned
check_cpus "$((${#all_cpus[@]} + 1))" pinned
check_cpus 3 shared

# --- Shaping: a TCP stream carries the rate (goodput is ~95.6% of it: Ethernet, IP and TCP
# headers count against the token bucket), each way at once, and three senders into one host
# share its rate.
cat >"$work/stream.py" <<'PY'
import os, socket, sys, threading, time
mode, seconds = sys.argv[1], float(sys.argv[2])
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
port = 5301
sends = {"duplex": {0: [1], 1: [0]}, "incast": {r: [0] for r in range(1, world)}}[mode]
incoming = sum(rank in dst for dst in sends.values())
server = socket.create_server((f"10.77.0.{rank + 1}", port), backlog=16)
received = []
def drain(conn):
    n, first, last = 0, None, None
    while chunk := conn.recv(1 << 20):
        last = time.perf_counter()
        first = first or last
        n += len(chunk)
    received.append((n, first, last))
def accept():
    threads = []
    for _ in range(incoming):
        t = threading.Thread(target=drain, args=(server.accept()[0],))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
def send(dst):
    for _ in range(100):  # the peer may not listen yet
        try:
            s = socket.create_connection((f"10.77.0.{dst + 1}", port))
            break
        except ConnectionRefusedError:
            time.sleep(0.05)
    block, end = bytes(1 << 20), time.perf_counter() + seconds
    while time.perf_counter() < end:
        s.sendall(block)
    s.close()
threads = [threading.Thread(target=accept)] + [threading.Thread(target=send, args=(d,))
                                               for d in sends.get(rank, [])]
for t in threads:
    t.start()
for t in threads:
    t.join()
if received:
    n = sum(r[0] for r in received)
    span = max(r[2] for r in received) - min(r[1] for r in received)
    print(f"mbit_per_s {n * 8 / span / 1e6:.1f}")
PY
stream() {  # $1: rate, $2: mode, $3: ranks; the receivers' logs hold "mbit_per_s X"
  "$cluster" --ranks "$3" --rate "$1" --prefix "$prefix" --log-dir "$work/$1-$2" -- \
    "$python" "$work/stream.py" "$2" 3 >/dev/null 2>&1
}
check_rate() {  # $1: rate, $2: Mbit/s of the rate, $3: mode, $4: receiving rank
  local got
  got="$(awk '/^mbit_per_s/ {print $2}' "$work/$1-$3/rank-$4.log")"
  # Unshaped, a veth pair carries several Gbit/s; TCP and contention for the cores cost some.
  if awk -v g="$got" -v r="$2" 'BEGIN { exit !(g >= 0.8 * r && g <= 1.02 * r) }'; then
    ok "$1 $3 into rank $4: $got Mbit/s of TCP goodput"
  else
    fail "$1 $3 into rank $4: '$got' Mbit/s, wanted 80%..102% of $2"
  fi
}
if stream 100mbit duplex 2; then
  check_rate 100mbit 100 duplex 0
  check_rate 100mbit 100 duplex 1
else
  fail "the 100mbit duplex stream run failed"
fi
if stream 1gbit incast 4; then
  check_rate 1gbit 1000 incast 0
else
  fail "the 1gbit incast stream run failed"
fi

# --- A failing rank stops the others at once and is named.
start=$SECONDS
# shellcheck disable=SC2016  # $RANK is expanded by each rank's shell
out="$("$cluster" --ranks 3 --rate 1gbit --prefix "$prefix" --log-dir "$work/fail" -- \
         bash -c 'if [ "$RANK" = 1 ]; then echo "rank {rank} gives up"; exit 3; fi
                exec -a cluster-test-marker sleep 60' 2>&1)"
rc=$?
if ((rc == 1)) && [[ "$out" == *"rank 1 exited with code 3"* && "$out" == *"rank 1 gives up"* ]] \
   && ((SECONDS - start < 20)); then
  ok "a rank exiting 3 stops the job in $((SECONDS - start)) s, exit 1, named with its log"
else
  fail "failing rank: exit $rc after $((SECONDS - start)) s, output: $out"
fi
[[ -z "$(leftovers)" ]] || fail "left behind after a failing rank: $(leftovers | tr '\n' ' ')"

# --- SIGINT (Ctrl-C) stops every rank, removes everything, exit 130. Job control gives the
# background run its own process group with SIGINT not ignored, as at a terminal.
set -m
"$cluster" --ranks 3 --rate 1gbit --prefix "$prefix" --log-dir "$work/int" -- \
  bash -c "exec -a cluster-test-marker sleep 60" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 50); do [[ -n "$(pgrep -f "^cluster-test-marker")" ]] && break; sleep 0.1; done
kill -INT "$pid"
wait "$pid"
rc=$?
if ((rc == 130)); then ok "SIGINT: exit 130"; else fail "SIGINT: exit $rc, wanted 130"; fi
[[ -z "$(leftovers)" ]] || fail "left behind after SIGINT: $(leftovers | tr '\n' ' ')"

# --- SIGKILL leaves the namespaces and ranks; the next run with the prefix removes them.
"$cluster" --ranks 2 --rate 1gbit --prefix "$prefix" --log-dir "$work/kill" -- \
  bash -c "exec -a cluster-test-marker sleep 60" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 50); do [[ -n "$(pgrep -f "^cluster-test-marker")" ]] && break; sleep 0.1; done
kill -KILL "$pid"
wait "$pid" 2>/dev/null
set +m
[[ -n "$(leftovers)" ]] || fail "SIGKILL: expected leftovers to clean, found none"
if "$cluster" --ranks 2 --rate 1gbit --prefix "$prefix" --log-dir "$work/after" -- true \
     >/dev/null 2>&1 && [[ -z "$(leftovers)" ]]; then
  ok "the run after a SIGKILLed one removed its namespaces and ranks"
else
  fail "after SIGKILL: left behind: $(leftovers | tr '\n' ' ')"
fi

# --- cluster_compare.sh end to end, with a stand-in for frugal that writes a summary and metrics
# at once (1000 samples/s with --sync none, else 400; --fail fails): the table's ratios, the
# failed configuration's reason, the plots.
cat >"$work/fake-frugal" <<'PY'
#!/usr/bin/python3
import json, os, sys
a = sys.argv[1:]
if "--fail" in a:
    sys.exit("frugal train: asked to fail")
alone = "--sync" in a
if os.environ["RANK"] == "0":
    with open(a[a.index("--summary") + 1], "w") as f:
        json.dump({"samples_per_s": 1000.0 if alone else 400.0, "wall_s": 1.0,
                   "bytes_sent_per_step": 0.0 if alone else 3e7, "dense_bytes_per_step": 2e7,
                   "test_accuracy": 0.5}, f)
    with open(a[a.index("--metrics") + 1], "w") as f:
        for step in range(1, 11):
            f.write(json.dumps({"type": "step", "step": step, "loss": 2.0 / step,
                                "train_s": 0.1 * step}) + "\n")
PY
chmod +x "$work/fake-frugal"
compare="$(dirname "$cluster")/cluster_compare.sh"
"$compare" --ranks 2 --rates 1gbit,100mbit --steps 10 --frugal "$work/fake-frugal" \
  --prefix "$prefix" --out "$work/compare" --config dense: --config "sync-none:--sync none" \
  --config "broken:--fail" >"$work/compare.log" 2>&1
rc=$?
((rc == 1)) || fail "cluster_compare with a failing configuration: exit $rc, wanted 1"
if "$python" - "$work/compare" <<'PY'
import json, os, sys
out = sys.argv[1]
r = json.load(open(f"{out}/results.json"))
assert len(r["runs"]) == 6, f"{len(r['runs'])} runs, wanted 6"
for rate in ("1gbit", "100mbit"):
    m = r["medians"][rate]
    assert abs(m["dense"]["ratio_to_sync_none"] - 0.4) < 1e-9, m["dense"]
    assert m["broken"]["failed"] == 1, m["broken"]
broken = [x for x in r["runs"] if x["name"] == "broken"]
assert all(x["error"] == "frugal train: asked to fail" for x in broken), broken
md = open(f"{out}/results.md").read()
assert "| dense |  | 400.0 | - | 0.40x | 50.00% | 30.00 | 20.00 |" in md, md
assert "failed: frugal train: asked to fail" in md, md
try:
    import matplotlib  # noqa: F401
except ImportError:
    sys.exit(0)
for svg in ("throughput.svg", "loss_vs_time.svg"):
    assert os.path.getsize(f"{out}/{svg}") > 1000, svg
PY
then
  ok "cluster_compare.sh: results.json, results.md (ratios, failure reason) and plots"
else
  fail "cluster_compare.sh output (log: $(tail -n 3 "$work/compare.log"))"
fi
[[ -z "$(leftovers)" ]] || fail "left behind after cluster_compare: $(leftovers | tr '\n' ' ')"

if ((failures > 0)); then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all cluster.sh checks passed"
