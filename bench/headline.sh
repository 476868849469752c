#!/usr/bin/env bash
# Measures the headline claims of compressed synchronization on this machine, each against a
# baseline of the same run, and writes a scorecard: measured ratio, goal, verdict (issue 5).
#
# Usage: bench/headline.sh [--out DIR] [--parts throughput,accuracy,replay] [--repeats 2]
#                          [--frugal build/frugal]
#   --out DIR      where everything goes (default: a new /tmp/headline.XXXXXX)
#   --parts LIST   the measurements to run (default: all three). The scorecard reads whatever DIR
#                  holds, so parts can be run, or run again, one at a time into the same DIR.
#   --repeats K    repeats of the 1 Gbit/s comparison, whose tables report the median (default 2)
#   --frugal PATH  the binary (default: this checkout's build/frugal)
# The parts, all with mlp on Fashion-MNIST, 4 workers, batch 32 per worker, one thread each:
#   throughput  bench/cluster_compare.sh on 4 emulated hosts: PyTorch DDP, --sync none,
#               adtopk:density=0.01 with safusion, the same with error feedback (as ADTopk's
#               authors run it) and the default; 150 steps at 1 Gbit/s (K repeats), 40 steps at
#               100 Mbit/s -> DIR/1gbit, DIR/100mbit (about 14 minutes)
#   accuracy    frugal train over loopback for 3 epochs with safusion and the default 128K
#               cut-off: dense, ef(topk), ef(dgc), ef(adtopk) and adtopk at density 0.01
#               -> DIR/accuracy (about 25 minutes)
#   replay      frugal bench replay on 4 emulated hosts at 1 Gbit/s: ResNet-50 and BERT-base
#               shapes, none, omgs and safusion, backward = dense communication / 1.5
#               -> DIR/replay (about 10 minutes)
# Writes DIR/headline.md and DIR/headline.json (bench/headline_scorecard.py) and prints the
# table. Exit status 1 if a run failed (the others still run), 130 on Ctrl-C. Throughput and
# replay need root (network namespaces). Do not build or run anything else meanwhile: the
# emulated hosts share this machine's cores.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
python=/usr/bin/python3

out=""
parts="throughput,accuracy,replay"
repeats=2
frugal="$repo/build/frugal"
# The compressors of the accuracy claim, by file name: dense is the reference.
accuracy_configs=(
  "dense:none"
  "ef-topk:ef(topk:density=0.01)"
  "ef-dgc:ef(dgc:density=0.01)"
  "ef-adtopk:ef(adtopk:density=0.01)"
  "adtopk:adtopk:density=0.01"
)

usage() { sed -n '5,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "headline: $*" >&2; exit 2; }

parse_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -h|--help) usage; exit 0 ;;
      --out|--parts|--repeats|--frugal)
        [[ $# -ge 2 ]] || die "$1 needs a value"
        case "$1" in
          --out) out="$2" ;;
          --parts) parts="$2" ;;
          --repeats) repeats="$2" ;;
          --frugal) frugal="$2" ;;
        esac
        shift 2 ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
  done
  [[ "$parts" =~ ^(throughput|accuracy|replay)(,(throughput|accuracy|replay))*$ ]] \
    || die "--parts must be a comma-separated list of throughput, accuracy, replay; got '$parts'"
  [[ "$repeats" =~ ^[1-9][0-9]*$ ]] || die "--repeats must be a positive integer, got '$repeats'"
  [[ -x "$frugal" ]] || die "frugal binary '$frugal' is missing or not executable (build it, or pass --frugal PATH)"
  if [[ ",$parts," == *,throughput,* || ",$parts," == *,replay,* ]] && ((EUID != 0)); then
    die "throughput and replay must run as root: bench/cluster.sh creates network namespaces"
  fi
}

wants() { [[ ",$parts," == *",$1,"* ]]; }

# Runs "$@", keeping the first failure in $status and stopping everything on Ctrl-C.
status=0
step() {
  local rc=0
  "$@" || rc=$?
  ((rc == 130 || rc == 143)) && exit 130
  ((rc == 0)) || { echo "headline: '$*' failed (exit $rc)" >&2; status=1; }
}

run_throughput() {
  local common=(--ranks 4 --model mlp --batch-size 32 --threads 1 --frugal "$frugal"
                --config "ddp:" --config "adtopk-safusion:--compress adtopk:density=0.01 --fusion safusion"
                --config "ef-adtopk-safusion:--compress ef(adtopk:density=0.01) --fusion safusion"
                --config "default:")
  step "$here/cluster_compare.sh" "${common[@]}" --rates 1gbit --steps 150 --repeats "$repeats" \
    --config "sync-none:--sync none" --out "$out/1gbit"
  # DDP moves 35 MB per step at 100 Mbit/s (about 3 s), hence fewer steps.
  step "$here/cluster_compare.sh" "${common[@]}" --rates 100mbit --steps 40 --out "$out/100mbit"
}

run_accuracy() {
  local entry name spec
  mkdir -p "$out/accuracy"
  for entry in "${accuracy_configs[@]}"; do
    name="${entry%%:*}"
    spec="${entry#*:}"
    echo "headline: accuracy of $spec (log: $out/accuracy/$name.log)" >&2
    step "$frugal" train --model mlp --dataset fashion-mnist --workers 4 --batch-size 32 \
      --epochs 3 --threads 1 --fusion safusion --dense-below 128K --compress "$spec" \
      --progress lines --summary "$out/accuracy/$name.json" >"$out/accuracy/$name.log" 2>&1
  done
}

run_replay() {
  mkdir -p "$out/replay"
  echo "headline: engine replay (log: $out/replay/replay.log)" >&2
  step "$here/cluster.sh" --ranks 4 --rate 1gbit --log-dir "$out/replay/logs" -- \
    "$frugal" bench replay --model resnet50,bert-base --fusion none,omgs,safusion \
    --comm-ratio 1.5 --json "$out/replay/replay.json" --markdown "$out/replay/replay.md" \
    >"$out/replay/replay.log" 2>&1
}

main() {
  parse_args "$@"
  if [[ -z "$out" ]]; then out="$(mktemp -d /tmp/headline.XXXXXX)"; fi
  mkdir -p "$out"
  out="$(cd "$out" && pwd)"
  echo "headline: results in $out ($(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?'))" >&2
  trap 'exit 130' INT TERM
  if wants throughput; then run_throughput; fi
  if wants accuracy; then run_accuracy; fi
  if wants replay; then run_replay; fi
  step "$python" "$here/headline_scorecard.py" "$out"
  exit "$status"
}

main "$@"
