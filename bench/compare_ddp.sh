#!/usr/bin/env bash
# Runs `frugal train` (dense, gloo) and stock PyTorch DDP (bench/ddp_baseline.py, gloo, 25 MiB
# buckets) on loopback with the same model, per-worker batch, thread count, steps and data, and
# reports Frugal's throughput as a ratio of DDP's (issue 4: ratio >= 1.0 for mlp on 4 workers).
#
# Usage: bench/compare_ddp.sh [--workers 4] [--model mlp] [--batch-size 32] [--threads 1]
#                             [--steps 200] [--repeats 1] [--frugal build/frugal] [--out DIR]
#                             [--frugal-args "EXTRA"] [--ddp-args "EXTRA"]
#
# Each repeat runs both systems one after the other, alternating which goes first. With one repeat
# the summaries are DIR/frugal.json and DIR/ddp.json; with several, DIR/frugal-N.json and
# DIR/ddp-N.json. Logs go beside them (*.log). DIR/compare.json holds every summary and ratio.
# Both systems compete for the same cores: run it on an otherwise idle machine.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
python=/usr/bin/python3  # Debian's interpreter: the one with python3-torch

workers=4
model=mlp
batch_size=32
threads=1
steps=200
repeats=1
frugal="$repo/build/frugal"
out=""
frugal_args=""
ddp_args=""

usage() { sed -n '6,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "compare_ddp: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) workers="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --batch-size) batch_size="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --frugal) frugal="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --frugal-args) frugal_args="$2"; shift 2 ;;
    --ddp-args) ddp_args="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

for pair in "workers:$workers" "batch-size:$batch_size" "steps:$steps" "repeats:$repeats"; do
  [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]] || die "--${pair%%:*} must be a positive integer, got '${pair#*:}'"
done
[[ "$threads" =~ ^[0-9]+$ ]] || die "--threads must be a non-negative integer, got '$threads'"
[[ -x "$frugal" ]] || die "frugal binary '$frugal' is missing or not executable (build it, or pass --frugal PATH)"
[[ -x "$python" ]] || die "$python not found: install python3-torch"
"$python" -c 'import torch' 2>/dev/null || die "$python cannot import torch: install python3-torch"

if [[ -z "$out" ]]; then
  out="$(mktemp -d /tmp/compare_ddp.XXXXXX)"
fi
mkdir -p "$out"
echo "compare_ddp: results in $out"

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

run_system() {  # $1: name, $2: summary path, $3: log path, $4: extra flags, then the command
  local name="$1" summary="$2" log="$3" extra="$4"
  shift 4
  local cmd=("$@" --workers "$workers" --model "$model" --dataset fashion-mnist
             --batch-size "$batch_size" --threads "$threads" --steps "$steps" --summary "$summary")
  # shellcheck disable=SC2206  # word splitting of the extra flags is intended
  [[ -n "$extra" ]] && cmd+=($extra)
  echo "+ ${cmd[*]}" | tee "$log"
  rm -f "$summary"
  if ! "${cmd[@]}" >>"$log" 2>&1; then
    tail -n 20 "$log" >&2
    die "$name failed (log: $log)"
  fi
  [[ -s "$summary" ]] || die "$name exited 0 but wrote no summary to $summary (log: $log)"
}
run_frugal() {  # $1: summary path, $2: log path
  run_system "frugal train" "$1" "$2" "$frugal_args" "$frugal" train --backend gloo
}
run_ddp() {  # $1: summary path, $2: log path
  run_system "PyTorch DDP baseline" "$1" "$2" "$ddp_args" "$python" "$here/ddp_baseline.py"
}

pairs=()
for ((r = 1; r <= repeats; r++)); do
  if ((repeats == 1)); then suffix=""; else suffix="-$r"; fi
  f_json="$out/frugal$suffix.json"
  d_json="$out/ddp$suffix.json"
  if ((r % 2 == 1)); then
    run_frugal "$f_json" "$out/frugal$suffix.log"
    run_ddp "$d_json" "$out/ddp$suffix.log"
  else
    run_ddp "$d_json" "$out/ddp$suffix.log"
    run_frugal "$f_json" "$out/frugal$suffix.log"
  fi
  pairs+=("$f_json" "$d_json")
done

"$python" - "$out/compare.json" "$workers" "$model" "$batch_size" "$threads" "$steps" \
  "${pairs[@]}" <<'EOF'
import json
import statistics
import sys

out_path, workers, model, batch, threads, steps = sys.argv[1:7]
files = sys.argv[7:]


def load(path, who):
    try:
        with open(path) as f:
            summary = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"compare_ddp: cannot read the {who} summary {path}: {e}")
    rate = summary.get("samples_per_s")
    if not isinstance(rate, (int, float)) or rate <= 0:
        sys.exit(f"compare_ddp: {path} has no positive samples_per_s (got {rate!r})")
    return summary


runs = []
for i in range(0, len(files), 2):
    frugal, ddp = load(files[i], "frugal"), load(files[i + 1], "ddp")
    world = frugal.get("world_size", frugal.get("workers"))
    if world is not None and int(world) != int(workers):
        sys.exit(f"compare_ddp: {files[i]} reports world_size {world}, asked for {workers}")
    runs.append({"repeat": i // 2 + 1, "frugal": frugal, "ddp": ddp,
                 "ratio": frugal["samples_per_s"] / ddp["samples_per_s"]})

ratios = [r["ratio"] for r in runs]
result = {
    "config": {"workers": int(workers), "model": model, "batch_size": int(batch),
               "threads": int(threads), "steps": int(steps), "dataset": "fashion-mnist",
               "backend": "gloo"},
    "runs": runs,
    "ratio_median": statistics.median(ratios),
    "ratio_best": max(ratios),
}
with open(out_path, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")

print()
print(f"{model}, {workers} workers x batch {batch}, {threads} thread(s) each, {steps} steps, "
      f"gloo on loopback")
print()
print("| repeat | system | samples/s | timed s | ratio frugal/ddp |")
print("|---:|---|---:|---:|---:|")
for r in runs:
    for name, s in (("frugal", r["frugal"]), ("pytorch-ddp", r["ddp"])):
        # Frugal's wall_s covers the whole run (evaluation included), train_s the training loop;
        # the baseline's wall_s is its timed loop only.
        wall = s.get("train_s", s.get("wall_s"))
        wall = f"{wall:.2f}" if isinstance(wall, (int, float)) else "-"
        ratio = f"{r['ratio']:.3f}" if name == "frugal" else ""
        print(f"| {r['repeat']} | {name} | {s['samples_per_s']:.1f} | {wall} | {ratio} |")
print()
print(f"ratio frugal/ddp: median {result['ratio_median']:.3f}, best {result['ratio_best']:.3f} "
      f"({'>=' if result['ratio_best'] >= 1.0 else '<'} 1.0)")
print(f"written: {out_path}")
EOF
