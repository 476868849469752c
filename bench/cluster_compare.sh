#!/usr/bin/env bash
# Runs training configurations on an emulated cluster (bench/cluster.sh) at several link rates and
# tabulates them against PyTorch DDP and against training without synchronization (issue 5).
#
# Usage: bench/cluster_compare.sh [--ranks 4] [--rates 1gbit,100mbit] [--delay D] [--cpus pinned]
#                                 [--model mlp]
#                                 [--batch-size 32] [--steps 150 | --epochs E] [--threads 1]
#                                 [--repeats 1] [--frugal build/frugal] [--prefix frgc] [--out DIR]
#                                 [--config NAME:ARGS]...
#   --config NAME:ARGS  one configuration (repeatable; default "ddp:" and "dense:"). ARGS are
#                       appended to `frugal train --model M --dataset fashion-mnist --batch-size B
#                       --steps S --threads T --summary .. --metrics ..`; the name "ddp" runs
#                       bench/ddp_baseline.py (same model, batch, steps and threads) with ARGS.
#                       Names "ddp" and "sync-none" are the baselines of the ratio columns.
#   --cpus MODE         cluster.sh's CPU placement: pinned (each host on its own share of the
#                       cores, the default) or shared
#   --epochs E          train E epochs instead of --steps (both systems then report accuracy)
#   --repeats K         run everything K times, odd repeats in the given order and even ones in
#                       reverse; the tables report the median
# Example:
#   bench/cluster_compare.sh --ranks 4 --rates 1gbit,100mbit --steps 150 --out /tmp/cc \
#     --config "ddp:" --config "dense:" --config "sync-none:--sync none"
#
# Writes DIR/results.json (every run: rate, name, args, exit status, its summary and the paths of
# its summary, metrics and logs), DIR/results.md (one table per rate) and, with python3-matplotlib,
# DIR/throughput.svg and DIR/loss_vs_time.svg (bench/plot_results.py). Per-run files are
# DIR/runs/RATE.NAME.rK.{json,jsonl} and DIR/logs/RATE.NAME.rK/ (rank-r.log, cluster.log). A run
# that fails is recorded as failed and the others still run; the exit status is then 1. Ctrl-C
# stops the current run (cluster.sh cleans up), writes what has finished and exits 130.
# Needs root (network namespaces). The emulated hosts share this machine's cores.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
python=/usr/bin/python3  # Debian's interpreter: the one with python3-torch and python3-matplotlib

ranks=4
rates="1gbit"
delay=""
cpus="pinned"
model=mlp
batch_size=32
steps=""
epochs=""
threads=1
repeats=1
frugal="$repo/build/frugal"
prefix=frgc
out=""
configs=()

usage() { sed -n '5,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "cluster_compare: $*" >&2; exit 1; }

parse_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -h|--help) usage; exit 0 ;;
      --ranks|--rates|--delay|--cpus|--model|--batch-size|--steps|--epochs|--threads|--repeats|\
      --frugal|--prefix|--out|--config)
        [[ $# -ge 2 ]] || die "$1 needs a value"
        case "$1" in
          --ranks) ranks="$2" ;;
          --rates) rates="$2" ;;
          --delay) delay="$2" ;;
          --cpus) cpus="$2" ;;
          --model) model="$2" ;;
          --batch-size) batch_size="$2" ;;
          --steps) steps="$2" ;;
          --epochs) epochs="$2" ;;
          --threads) threads="$2" ;;
          --repeats) repeats="$2" ;;
          --frugal) frugal="$2" ;;
          --prefix) prefix="$2" ;;
          --out) out="$2" ;;
          --config) configs+=("$2") ;;
        esac
        shift 2 ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
  done
}

validate() {
  local pair name seen=" " c
  [[ -n "$steps" && -n "$epochs" ]] && die "give --steps or --epochs, not both"
  [[ -z "$steps" && -z "$epochs" ]] && steps=150
  for pair in "ranks:$ranks" "batch-size:$batch_size" "repeats:$repeats" "steps:${steps:-1}" \
              "epochs:${epochs:-1}"; do
    [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]] || die "--${pair%%:*} must be a positive integer, got '${pair#*:}'"
  done
  [[ "$threads" =~ ^[0-9]+$ ]] || die "--threads must be a non-negative integer, got '$threads'"
  [[ "$cpus" == pinned || "$cpus" == shared ]] || die "--cpus must be pinned or shared, got '$cpus'"
  local rate_re='([0-9]+|[0-9]*\.[0-9]+)(bit|kbit|mbit|gbit|tbit)'
  [[ "${rates,,}" =~ ^$rate_re(,$rate_re)*$ ]] \
    || die "--rates must be a comma-separated list of rates like 1gbit,100mbit, got '$rates'"
  [[ ${#configs[@]} -gt 0 ]] || configs=("ddp:" "dense:")
  for c in "${configs[@]}"; do
    [[ "$c" == *:* ]] || die "--config '$c' needs the form NAME:ARGS (ARGS may be empty: 'dense:')"
    name="${c%%:*}"
    [[ "$name" =~ ^[A-Za-z0-9_.+-]+$ ]] \
      || die "--config name '$name' may hold only letters, digits and _ . + -"
    [[ "$seen" == *" $name "* ]] && die "--config name '$name' is given twice"
    seen+="$name "
  done
  [[ -x "$frugal" ]] || die "frugal binary '$frugal' is missing or not executable (build it, or pass --frugal PATH)"
  [[ -x "$python" ]] || die "$python not found: install python3-torch"
  ((EUID == 0)) || die "must run as root: bench/cluster.sh creates network namespaces"
}

# Prints the command of one configuration, one argument per line (ARGS split on blanks).
run_command() {  # $1: name, $2: args, $3: summary path, $4: metrics path
  local name="$1" args="$2" summary="$3" metrics="$4" length cmd extra=()
  # shellcheck disable=SC2206  # word splitting of the configuration's flags is intended
  extra=($args)
  if [[ -n "$steps" ]]; then length=(--steps "$steps"); else length=(--epochs "$epochs"); fi
  if [[ "$name" == ddp ]]; then
    cmd=("$python" "$here/ddp_baseline.py" --model "$model" --dataset fashion-mnist
         --batch-size "$batch_size" --threads "$threads" "${length[@]}" --summary "$summary" --eval)
  else
    cmd=("$frugal" train --model "$model" --dataset fashion-mnist --batch-size "$batch_size"
         --threads "$threads" "${length[@]}" --summary "$summary" --metrics "$metrics")
    # About 100 points per loss curve; the loss is rank 0's own, so logging costs no communication.
    [[ " $args " == *" --log-every"* ]] || cmd+=(--log-every "$(log_every)")
    [[ " $args " == *" --progress"* ]] || cmd+=(--progress lines)
  fi
  printf '%s\n' "${cmd[@]}" "${extra[@]}"
}

log_every() {
  local total="$steps"
  # Fashion-MNIST's 60000 training samples, sharded as both systems do (ragged batches dropped).
  local steps_per_epoch=$((60000 / ranks / batch_size))
  [[ -z "$total" ]] && total=$((steps_per_epoch * epochs))
  echo $(((total + 99) / 100))
}

# CPU time in clock ticks: the machine's user and system time, and what this script's finished
# children (cluster.sh and the ranks it reaped) used. The difference during a run is what other
# processes used, kernel threads included (ksoftirqd carries part of the emulated network's
# packet processing): on a shared machine it says whether a run had the cores to itself.
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 }' /proc/stat; }
our_ticks() { awk '{ print $16 + $17 }' "/proc/$$/stat"; }

# Runs one (rate, config, repeat) on the cluster and appends its line to the manifest.
run_one() {  # $1: rate, $2: config "NAME:ARGS", $3: repeat
  local rate="$1" name="${2%%:*}" args="${2#*:}" repeat="$3" id cmd=() start rc=0 seconds
  local busy0 ours0 other
  id="$rate.$name.r$repeat"
  local summary="$out/runs/$id.json" metrics="$out/runs/$id.jsonl" logs="$out/logs/$id"
  rm -rf "$summary" "$metrics" "$logs"
  mkdir -p "$logs"
  mapfile -t cmd < <(run_command "$name" "$args" "$summary" "$metrics")
  echo "cluster_compare: [$rate] $name (repeat $repeat): ${cmd[*]}" >&2
  busy0="$(busy_ticks)"
  ours0="$(our_ticks)"
  start="$(date +%s.%N)"
  "$here/cluster.sh" --ranks "$ranks" --rate "$rate" ${delay:+--delay "$delay"} --cpus "$cpus" \
    --prefix "$prefix" --log-dir "$logs" -- "${cmd[@]}" >"$logs/cluster.log" 2>&1 || rc=$?
  seconds="$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }')"
  other="$(awk -v b="$(($(busy_ticks) - busy0))" -v o="$(($(our_ticks) - ours0))" \
             -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - o) / hz }')"
  if ((rc == 0)); then
    echo "cluster_compare:   ok in ${seconds}s" >&2
  elif ((rc == 130 || rc == 143)); then
    echo "cluster_compare:   interrupted; not recorded" >&2
    return "$rc"
  else
    echo "cluster_compare:   FAILED (exit $rc); $logs/cluster.log ends:" >&2
    tail -n 4 "$logs/cluster.log" | sed 's/^/    /' >&2
  fi
  [[ "$name" == ddp ]] && metrics=""
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$repeat" "$rate" "$name" "${args//$'\t'/ }" \
    "$rc" "$seconds" "$other" "${summary#"$out/"}" "${metrics#"$out/"}" "${logs#"$out/"}" \
    >>"$out/manifest.tsv"
  return "$rc"
}

main() {
  parse_args "$@"
  validate
  if [[ -z "$out" ]]; then out="$(mktemp -d /tmp/cluster_compare.XXXXXX)"; fi
  mkdir -p "$out/runs" "$out/logs"
  out="$(cd "$out" && pwd)"
  : >"$out/manifest.tsv"
  echo "cluster_compare: results in $out" >&2

  local rate_list=() order=() repeat rate i rc status=0
  IFS=, read -r -a rate_list <<<"$rates"
  for ((repeat = 1; repeat <= repeats; repeat++)); do
    order=("${configs[@]}")
    if ((repeat % 2 == 0)); then
      order=()
      for ((i = ${#configs[@]} - 1; i >= 0; i--)); do order+=("${configs[i]}"); done
    fi
    for rate in "${rate_list[@]}"; do
      for i in "${!order[@]}"; do
        rc=0
        run_one "$rate" "${order[i]}" "$repeat" || rc=$?
        # cluster.sh exits 130/143 on Ctrl-C/SIGTERM: stop here, after writing what finished.
        if ((rc == 130 || rc == 143)); then status=$rc; break 3; fi
        ((rc == 0)) || status=1
      done
    done
  done

  write_results || status=1
  if "$python" -c 'import matplotlib' 2>/dev/null; then
    "$python" "$here/plot_results.py" cluster "$out/results.json" || status=1
  else
    echo "cluster_compare: no plots: $python lacks matplotlib (apt-get install python3-matplotlib)" >&2
  fi
  exit "$status"
}

write_results() {
  local git_rev
  git_rev="$(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)"
  "$python" - "$out" "$ranks" "$rates" "$delay" "$model" "$batch_size" "${steps:-0}" \
    "${epochs:-0}" "$threads" "$repeats" "$git_rev" "$cpus" <<'EOF'
import json
import os
import statistics
import sys

out, ranks, rates, delay, model, batch, steps, epochs, threads, repeats, git_rev, cpus = \
    sys.argv[1:13]
KEYS = ["samples_per_s", "wall_s", "train_s", "test_accuracy", "bytes_sent_per_step",
        "dense_bytes_per_step", "exposed_comm_ms_per_step"]


def failure_reason(log_path):
    """The failing rank's last log line, as cluster.sh quotes it, else the log's last line."""
    try:
        with open(log_path) as f:
            lines = [line.rstrip("\n") for line in f if line.strip()]
    except OSError:
        return "no cluster log"
    quoted = [line[4:] for line in lines
              if line.startswith("  | ") and "Run with --help" not in line]
    return (quoted or lines or ["empty cluster log"])[-1].strip()


runs = []
with open(os.path.join(out, "manifest.tsv")) as f:
    for line in f:
        (repeat, rate, name, args, rc, seconds, other_cpu, summary, metrics,
         logs) = line.rstrip("\n").split("\t")
        run = {"rate": rate, "name": name, "args": args, "repeat": int(repeat),
               "system": "pytorch-ddp" if name == "ddp" else "frugal", "exit_code": int(rc),
               "run_s": float(seconds), "other_cpu_s": max(0.0, float(other_cpu)),
               "summary_path": summary, "metrics_path": metrics or None,
               "log_dir": logs, "summary": None}
        if int(rc) == 0:
            try:
                with open(os.path.join(out, summary)) as s:
                    run["summary"] = json.loads(s.read())
            except (OSError, ValueError) as e:
                run["exit_code"], run["error"] = 1, f"no readable summary {summary}: {e}"
        else:
            run["error"] = failure_reason(os.path.join(out, logs, "cluster.log"))
        # Tick accounting can make a quiet run's share slightly negative.
        run["other_cpu_share"] = run["other_cpu_s"] / (run["run_s"] * os.cpu_count() or 1)
        if run["summary"] is not None:
            run.update({k: run["summary"].get(k) for k in KEYS})
        runs.append(run)

# Medians over repeats, per (rate, config), in the order the configurations were given.
groups = {}
for run in runs:
    groups.setdefault(run["rate"], {}).setdefault(run["name"], []).append(run)
order = []
for run in sorted(runs, key=lambda r: r["repeat"] % 2 == 0):
    if run["name"] not in order:
        order.append(run["name"])


def median(runs, key):
    values = [r[key] for r in runs if r["summary"] is not None and r.get(key) is not None]
    return statistics.median(values) if values else None


table = {}
for rate, by_name in groups.items():
    table[rate] = {}
    for name in order:
        rs = by_name.get(name, [])
        table[rate][name] = {k: median(rs, k) for k in KEYS + ["run_s"]}
        ok = [r["samples_per_s"] for r in rs if r["summary"] is not None and r["samples_per_s"]]
        table[rate][name].update({
            "args": rs[0]["args"] if rs else "", "runs": len(rs),
            "failed": sum(r["summary"] is None for r in rs),
            "samples_per_s_range": [min(ok), max(ok)] if ok else None,
            "other_cpu_share_max": max((r["other_cpu_share"] for r in rs), default=None)})
    for name, row in table[rate].items():
        for base in ("ddp", "sync-none"):
            b = table[rate].get(base, {}).get("samples_per_s")
            s = row["samples_per_s"]
            row[f"ratio_to_{base.replace('-', '_')}"] = s / b if s and b else None

result = {
    "config": {"ranks": int(ranks), "rates": rates.split(","), "delay": delay or None,
               "model": model, "dataset": "fashion-mnist", "batch_size": int(batch),
               "steps": int(steps) or None, "epochs": int(epochs) or None,
               "threads": int(threads), "repeats": int(repeats), "git": git_rev,
               "host_cores": os.cpu_count(), "cpus": cpus},
    "runs": runs,
    "medians": table,
}
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")


def fmt(value, spec, scale=1.0, suffix=""):
    return "-" if value is None else f"{value * scale:{spec}}{suffix}"


length = f"{steps} steps" if int(steps) else f"{epochs} epoch(s)"
md = [f"# Emulated cluster: {ranks} hosts, {model}, batch {batch} per host, {length}, "
      f"{threads} thread(s) per host{', delay ' + delay if delay else ''}",
      "",
      f"Median of {repeats} repeat(s) (range in brackets); git {git_rev}; {os.cpu_count()} "
      f"cores shared by all hosts ({'each pinned to its share' if cpus == 'pinned' else 'unpinned'}"
      "). samples/s counts every host's samples after the first 5 "
      "steps; MB = 10^6 bytes sent by one host per step; run s is the whole cluster run "
      "(start-up and evaluation included); other CPU is the largest share of the machine that "
      "other processes used during one of the cell's runs (kernel threads included): more than "
      "a few percent means the cores were contended and samples/s is low.",
      ""]
for rate in rates.split(","):
    if rate not in table:
        continue
    md += [f"## {rate}", "",
           "| config | args | samples/s | vs ddp | vs sync-none | test acc. | MB sent/step "
           "| dense MB/step | run s | other CPU |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in table[rate].items():
        args = f"`{row['args']}`" if row["args"] else ""
        if row["failed"] == row["runs"]:
            reason = next((r.get("error", "") for r in groups[rate][name] if r.get("error")), "")
            md.append(f"| {name} | {args} | failed: {reason.replace('|', '/')} | | | | | | | |")
            continue
        spread = row["samples_per_s_range"]
        spread = f" [{spread[0]:.0f}-{spread[1]:.0f}]" if spread and row["runs"] > 1 else ""
        md.append(
            f"| {name} | {args} | {fmt(row['samples_per_s'], '.1f')}{spread} "
            f"| {fmt(row['ratio_to_ddp'], '.2f', suffix='x')} "
            f"| {fmt(row['ratio_to_sync_none'], '.2f', suffix='x')} "
            f"| {fmt(row['test_accuracy'], '.2f', 100, '%')} "
            f"| {fmt(row['bytes_sent_per_step'], '.2f', 1e-6)} "
            f"| {fmt(row['dense_bytes_per_step'], '.2f', 1e-6)} | {fmt(row['run_s'], '.1f')} "
            f"| {fmt(row['other_cpu_share_max'], '.0f', 100, '%')} |")
    md.append("")
with open(os.path.join(out, "results.md"), "w") as f:
    f.write("\n".join(md))
print("\n".join(md))
print(f"written: {out}/results.json, {out}/results.md")
EOF
}

main "$@"
