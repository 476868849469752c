#!/usr/bin/env bash
# Emulates a cluster of N hosts on this machine and runs one rank of COMMAND on each (issue 5).
#
# Usage: bench/cluster.sh --ranks N --rate RATE [--delay D] [--cpus pinned] [--prefix frg]
#                         [--log-dir DIR] [--master-port 29511] [--] COMMAND ARGS...
#   --ranks N          hosts, one rank each (1..250)
#   --rate RATE        link speed of every host, each way: 100mbit, 1gbit, 10gbit, 2.5gbit, ...
#   --delay D          one-way host-to-host latency added by netem (e.g. 0.1ms, 50us; default none)
#   --cpus MODE        pinned (default): host r runs on its own share of this machine's CPUs,
#                      the i-th of them (in the script's affinity list) for i % N == r, or CPU
#                      r % C when the N hosts outnumber the C CPUs; shared: every host may run
#                      anywhere, as the scheduler likes
#   --prefix P         names: host namespaces P0..P(N-1), switch namespace Psw, bridge Pbr
#                      (default frg; one run per prefix at a time: a run first removes whatever
#                      namespaces and ranks an earlier run with its prefix left behind)
#   --log-dir DIR      rank r writes DIR/rank-r.log (default: a new /tmp/cluster.XXXXXX)
#   --master-port P    rank 0's rendezvous port (default 29511; every host is a fresh namespace,
#                      so any port is free there)
#   COMMAND ARGS...    run once per host; "{rank}" in any argument becomes the rank
# Example: bench/cluster.sh --ranks 4 --rate 1gbit -- build/frugal train --threads 1 --steps 30
#
# Topology: host r is network namespace P<r> with interface eth0 = 10.77.0.(r+1)/24, a veth pair
# whose other end is a port of bridge Pbr in namespace Psw (the switch). Nothing is added to the
# root namespace, so runs with different prefixes do not interfere.
#
# Shaping: a full-duplex NIC of RATE each way. A token bucket (tbf) on the host's eth0 limits what
# the host sends; another on the switch port limits what the switch delivers to it, so N-1 senders
# into one host share RATE as they would behind a real switch. Bucket size (burst): 1 ms at RATE
# and at least 64 KiB. tbf runs on high-resolution timers, so the bucket need not cover a kernel
# tick (the classic rate/HZ rule, 4 ms at HZ=250); a small one keeps bursts after an idle spell
# short, so a transfer of a few MB already averages close to RATE. Queue: 20 ms at RATE (tbf
# latency), the order of a NIC's 1000-packet queue at 1gbit; beyond it packets drop and TCP backs
# off. Measured TCP goodput through it: 95-96% of RATE at 100mbit and 1gbit, the rest being
# Ethernet, IP and TCP headers (tests/cluster_script.sh checks it). --delay puts netem (parent)
# over the host's tbf (child), on the host side only, so a round trip gains 2 x D. netem needs a
# kernel with sch_netem: without it --delay is an error.
#
# CPUs: real hosts do not share cores, so by default each emulated host is pinned to its share
# (taskset). Unpinned, the scheduler moves every rank's threads across the cores at will, and a
# rank's compute and communication threads lose each other's caches: compressed mlp training ran
# 8% faster pinned over loopback, --sync none unchanged (docs/benchmarks.md).
#
# Each rank gets RANK, WORLD_SIZE, LOCAL_RANK=0, LOCAL_WORLD_SIZE=1, MASTER_ADDR=10.77.0.1,
# MASTER_PORT, GLOO_SOCKET_IFNAME=eth0, FRUGAL_SOCKET_IFNAME=eth0 and
# OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM)=1. The hosts share this machine's cores: give the command its
# thread count (frugal/ddp: --threads).
# Rank 0's output is also shown live. The first rank to fail stops the others at once; the script
# then exits 1 naming it and showing the end of its log. Ctrl-C stops every rank (exit 130),
# SIGTERM too (exit 143). Namespaces, links and rank processes are removed on every exit, and
# leftovers of an earlier killed run with the same prefix are removed at start. Needs root.
set -euo pipefail

ranks=""
rate=""
delay=""
prefix="frg"
log_dir=""
master_port=29511
cpus="pinned"
host_cpus=()      # host_cpus[r]: rank r's CPU list for taskset (--cpus pinned)
cmd=()

readonly subnet="10.77.0"
readonly queue_ms=20
readonly min_burst_bytes=65536
readonly stop_grace_s=2

pids=()           # pids[r]: rank r's process (ip netns exec, which execs the command)
echo_pid=""       # tail -f of rank 0's log
cleaned_up=0

usage() { sed -n '4,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "cluster: $*" >&2; exit 1; }

parse_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --ranks|--rate|--delay|--cpus|--prefix|--log-dir|--master-port)
        [[ $# -ge 2 ]] || die "$1 needs a value"
        case "$1" in
          --ranks) ranks="$2" ;;
          --rate) rate="$2" ;;
          --delay) delay="$2" ;;
          --cpus) cpus="$2" ;;
          --prefix) prefix="$2" ;;
          --log-dir) log_dir="$2" ;;
          --master-port) master_port="$2" ;;
        esac
        shift 2 ;;
      -h|--help) usage; exit 0 ;;
      --) shift; cmd=("$@"); return ;;
      -*) die "unknown flag '$1' (see --help)" ;;
      *) cmd=("$@"); return ;;
    esac
  done
}

# Bits per second of a tc rate ("1gbit" -> 1000000000; tc's k/m/g/t are powers of 1000).
rate_bps() {
  awk -v r="${1,,}" 'BEGIN {
    match(r, /^[0-9.]+/); n = substr(r, 1, RLENGTH); u = substr(r, RLENGTH + 1)
    m["bit"] = 1; m["kbit"] = 1e3; m["mbit"] = 1e6; m["gbit"] = 1e9; m["tbit"] = 1e12
    printf "%.0f\n", n * m[u] }'
}

validate() {
  [[ "$ranks" =~ ^[1-9][0-9]*$ && "$ranks" -le 250 ]] \
    || die "--ranks must be an integer in 1..250, got '${ranks:-nothing}'"
  [[ -n "$rate" ]] || die "--rate is required (e.g. --rate 1gbit)"
  [[ "${rate,,}" =~ ^([0-9]+|[0-9]*\.[0-9]+)(bit|kbit|mbit|gbit|tbit)$ \
     && "$(rate_bps "$rate")" -ge 8000 ]] \
    || die "--rate '$rate' is not a rate of at least 8kbit like 100mbit, 1gbit, 10gbit"
  [[ -z "$delay" || "${delay,,}" =~ ^([0-9]+|[0-9]*\.[0-9]+)(us|ms|s)$ ]] \
    || die "--delay '$delay' is not a time like 0.1ms, 50us or 1s"
  [[ "$cpus" == pinned || "$cpus" == shared ]] \
    || die "--cpus must be pinned or shared, got '$cpus'"
  [[ "$prefix" =~ ^[a-z][a-z0-9]{0,7}$ ]] \
    || die "--prefix '$prefix' must be 1-8 lowercase letters or digits, starting with a letter"
  [[ "$master_port" =~ ^[1-9][0-9]{0,4}$ && "$master_port" -ge 1 && "$master_port" -le 65535 ]] \
    || die "--master-port must be in 1..65535, got '$master_port'"
  [[ ${#cmd[@]} -gt 0 ]] || die "no command given (usage: cluster.sh --ranks N --rate R -- COMMAND ARGS...)"
  ((EUID == 0)) || die "must run as root: creating network namespaces needs CAP_NET_ADMIN"
  if ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
    die "ip and tc are missing: install iproute2"
  fi
}

# Runs a network setup command; on failure dies with what it was doing and the tool's message.
net() {
  local what="$1" err
  shift
  err="$("$@" 2>&1)" || die "cannot $what: '$*' said: ${err//$'\n'/ }"
}

# Stops every process in our host namespaces (TERM, then KILL after a grace period).
stop_processes() {
  local ns live=() pid deadline
  for ns in "$@"; do
    while read -r pid; do [[ -n "$pid" ]] && live+=("$pid"); done < <(ip netns pids "$ns" 2>/dev/null)
  done
  for pid in "${pids[@]}"; do [[ -n "$pid" ]] && live+=("$pid"); done
  [[ ${#live[@]} -eq 0 ]] && return 0
  kill -TERM "${live[@]}" 2>/dev/null || true
  deadline=$((SECONDS + stop_grace_s))
  while ((SECONDS < deadline)); do
    kill -0 "${live[@]}" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "${live[@]}" 2>/dev/null || true
  local r
  for r in "${!pids[@]}"; do
    if [[ -n "${pids[r]}" ]]; then
      wait "${pids[r]}" 2>/dev/null || true
      pids[r]=""  # reaped: the system may give the pid to an unrelated process
    fi
  done
  return 0
}

our_namespaces() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${prefix}([0-9]+|sw)\$" || true
}

remove_namespaces() {
  local namespaces=()
  mapfile -t namespaces < <(our_namespaces)
  [[ ${#namespaces[@]} -eq 0 ]] && return 0
  ((cleaned_up)) || echo "cluster: removing ${namespaces[*]}, left by an earlier run" >&2
  stop_processes "${namespaces[@]}"
  local ns
  # Deleting a namespace destroys its end of each veth pair and with it the other end.
  for ns in "${namespaces[@]}"; do ip netns delete "$ns" 2>/dev/null || true; done
}

# A rank's bash child that is signalled between fork and exec still holds these traps (bash
# runs the EXIT trap when a signal ends it): only the script's own process may clean up.
cleanup() {
  [[ "$BASHPID" == "$$" ]] || return 0
  set +e  # remove everything, whatever fails on the way
  ((cleaned_up)) && return 0
  cleaned_up=1
  stop_processes
  remove_namespaces
  if [[ -n "$echo_pid" ]]; then
    kill "$echo_pid" 2>/dev/null
    wait "$echo_pid" 2>/dev/null
  fi
  return 0
}

on_signal() {  # $1: exit status, $2: signal name
  [[ "$BASHPID" == "$$" ]] || exit "$1"
  trap - INT TERM
  echo "cluster: $2: stopping all ranks" >&2
  cleanup
  exit "$1"
}

# tc token bucket on DEV in NS, optionally below a netem delay.
shape() {  # $1: namespace, $2: device, $3: delay ("" for none)
  local ns="$1" dev="$2" d="$3" bps burst
  bps="$(rate_bps "$rate")"
  burst=$((bps / 8 / 1000))
  ((burst < min_burst_bytes)) && burst=$min_burst_bytes
  local tbf=(tbf rate "$rate" burst "$burst" latency "${queue_ms}ms")
  if [[ -z "$d" ]]; then
    net "shape $ns/$dev" tc -n "$ns" qdisc add dev "$dev" root handle 10: "${tbf[@]}"
  else
    # netem holds packets for the delay, then hands them to tbf; limit covers what is in flight.
    net "add --delay $d to $ns/$dev" tc -n "$ns" qdisc add dev "$dev" root handle 1: \
      netem delay "$d" limit 100000
    net "shape $ns/$dev" tc -n "$ns" qdisc add dev "$dev" parent 1:1 handle 10: "${tbf[@]}"
  fi
}

build_switch() {
  local sw="${prefix}sw" br="${prefix}br"
  net "create namespace $sw" ip netns add "$sw"
  net "create bridge $br" ip -n "$sw" link add "$br" type bridge forward_delay 0
  net "bring up $br" ip -n "$sw" link set "$br" up
  # Bridged frames need not cross netfilter (nothing is configured there; it only costs CPU).
  ip netns exec "$sw" sysctl -qw net.bridge.bridge-nf-call-iptables=0 >/dev/null 2>&1 || true
  if [[ -n "$delay" ]] && ! tc -n "$sw" qdisc add dev "$br" root netem delay "$delay" 2>/dev/null; then
    die "--delay needs the netem qdisc, which this kernel lacks (CONFIG_NET_SCH_NETEM); run without --delay"
  fi
  [[ -n "$delay" ]] && tc -n "$sw" qdisc del dev "$br" root 2>/dev/null
  return 0
}

add_host() {  # $1: rank
  local r="$1" ns="${prefix}$1" sw="${prefix}sw" port="${prefix}p$1"
  net "create namespace $ns" ip netns add "$ns"
  net "create the veth pair of $ns" ip link add "${prefix}h$r" netns "$ns" type veth \
    peer name "$port" netns "$sw"
  net "rename ${prefix}h$r to eth0 in $ns" ip -n "$ns" link set "${prefix}h$r" name eth0
  net "address $ns/eth0" ip -n "$ns" addr add "$subnet.$((r + 1))/24" dev eth0
  net "bring up $ns/eth0" ip -n "$ns" link set eth0 up
  net "bring up $ns/lo" ip -n "$ns" link set lo up
  net "attach $port to the bridge" ip -n "$sw" link set "$port" master "${prefix}br"
  net "bring up $sw/$port" ip -n "$sw" link set "$port" up
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 >/dev/null 2>&1 || true
  shape "$ns" eth0 "$delay"
  shape "$sw" "$port" ""
}

# The CPUs this script may run on, one per line ("0-2,5" -> 0 1 2 5), from its affinity mask.
allowed_cpus() {
  local list part
  list="$(awk '/^Cpus_allowed_list:/ {print $2}' /proc/self/status)"
  for part in ${list//,/ }; do
    if [[ "$part" == *-* ]]; then seq "${part%-*}" "${part#*-}"; else echo "$part"; fi
  done
}

# --cpus pinned: host r gets every CPU i (in allowed order) with i % N == r, or CPU r % C when
# there are fewer CPUs (C) than hosts (N).
assign_cpus() {
  local all=() r i list
  mapfile -t all < <(allowed_cpus)
  ((${#all[@]} > 0)) || die "cannot read this process's CPU affinity from /proc/self/status"
  for ((r = 0; r < ranks; r++)); do
    if ((ranks >= ${#all[@]})); then
      list="${all[r % ${#all[@]}]}"
    else
      list=""
      for ((i = r; i < ${#all[@]}; i += ranks)); do list+="${list:+,}${all[i]}"; done
    fi
    host_cpus[r]="$list"
  done
}

pinning() {  # "0:0 1:1 2:0 3:1"
  local r out=""
  for ((r = 0; r < ranks; r++)); do out+="${out:+ }$r:${host_cpus[r]}"; done
  echo "$out"
}

launch_rank() {  # $1: rank
  local r="$1" argv=() a pin=()
  for a in "${cmd[@]}"; do argv+=("${a//\{rank\}/$r}"); done
  [[ "$cpus" == pinned ]] && pin=(taskset -c "${host_cpus[r]}")
  ip netns exec "${prefix}$r" "${pin[@]}" env RANK="$r" WORLD_SIZE="$ranks" LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 \
    MASTER_ADDR="$subnet.1" MASTER_PORT="$master_port" \
    GLOO_SOCKET_IFNAME=eth0 FRUGAL_SOCKET_IFNAME=eth0 \
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    "${argv[@]}" </dev/null >"$log_dir/rank-$r.log" 2>&1 &
  pids[r]=$!
}

describe_status() {  # $1: exit status as wait reports it
  if (($1 > 128)); then
    echo "was killed by signal $(($1 - 128)) ($(kill -l "$(($1 - 128))" 2>/dev/null || echo '?'))"
  else
    echo "exited with code $1"
  fi
}

# Waits for every rank; the first failure stops the rest. Returns the failing rank's status.
wait_ranks() {
  local live=("${pids[@]}") finished status r i
  while [[ ${#live[@]} -gt 0 ]]; do
    finished=""
    # (stderr: bash would announce a rank killed by a signal; the report below says it better)
    if wait -n -p finished "${live[@]}" 2>/dev/null; then status=0; else status=$?; fi
    [[ -n "$finished" ]] || die "lost track of the rank processes (wait returned $status)"
    for i in "${!live[@]}"; do [[ "${live[i]}" == "$finished" ]] && unset 'live[i]'; done
    live=("${live[@]}")
    # Reaped: forget the pid, which the system may now give to an unrelated process.
    for r in "${!pids[@]}"; do [[ "${pids[r]}" == "$finished" ]] && break; done
    pids[r]=""
    ((status == 0)) && continue
    stop_processes
    [[ -n "$echo_pid" ]] && { wait "$echo_pid" 2>/dev/null || true; echo_pid=""; }
    echo "cluster: rank $r $(describe_status "$status"); the others were stopped." \
         "Last lines of $log_dir/rank-$r.log:" >&2
    if [[ -s "$log_dir/rank-$r.log" ]]; then
      tail -n 20 "$log_dir/rank-$r.log" | sed 's/^/  | /' >&2
    else
      echo "  | (empty)" >&2
    fi
    return 1
  done
  return 0
}

main() {
  parse_args "$@"
  validate
  if [[ -z "$log_dir" ]]; then log_dir="$(mktemp -d /tmp/cluster.XXXXXX)"; fi
  if ! mkdir -p "$log_dir" 2>/dev/null || [[ ! -w "$log_dir" ]]; then
    die "--log-dir '$log_dir' is not writable"
  fi

  trap cleanup EXIT
  trap 'on_signal 130 SIGINT' INT
  trap 'on_signal 143 SIGTERM' TERM
  remove_namespaces  # an earlier run with this prefix that was killed before it could clean up

  local placement="shared"
  if [[ "$cpus" == pinned ]]; then
    assign_cpus
    placement="pinned (host:cpus $(pinning))"
  fi
  build_switch
  local r
  for ((r = 0; r < ranks; r++)); do add_host "$r"; done
  echo "cluster: $ranks hosts at $rate${delay:+, $delay one way} on bridge ${prefix}br;" \
       "CPUs $placement; logs in $log_dir" >&2

  for ((r = 0; r < ranks; r++)); do launch_rank "$r"; done
  tail -s 0.2 -n +1 -F --pid="${pids[0]}" "$log_dir/rank-0.log" 2>/dev/null &
  echo_pid=$!
  wait_ranks || exit 1
  wait "$echo_pid" 2>/dev/null || true
  echo_pid=""
  echo "cluster: all $ranks ranks exited 0 (logs in $log_dir)" >&2
}

main "$@"
