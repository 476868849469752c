#!/usr/bin/env bash
# Bad input to the frugal executable: each case must exit non-zero within its time limit and
# print a one-line error that names what is wrong. Usage: cli_bad_input.sh path/to/frugal
set -uo pipefail
frugal="$1"
failures=0
cases=0

# expect_error EXPECTED_SUBSTRING ENV... -- ARGS...
expect_error() {
  local expected="$1"; shift
  local env_vars=()
  cases=$((cases + 1))
  while [ "$1" != "--" ]; do env_vars+=("$1"); shift; done
  shift
  local output code
  output=$(env "${env_vars[@]}" timeout 60 "$frugal" "$@" 2>&1)
  code=$?
  if [ "$code" -eq 0 ] || [ "$code" -eq 124 ]; then
    echo "FAIL: frugal $* (${env_vars[*]}) exited $code (0 = accepted, 124 = hung)"
    failures=$((failures + 1))
  elif ! grep -qF -- "$expected" <<<"$output"; then
    echo "FAIL: frugal $* (${env_vars[*]}): output lacks '$expected':"
    echo "$output" | sed 's/^/    /'
    failures=$((failures + 1))
  else
    echo "ok: frugal $* (${env_vars[*]}) -> exit $code: $(grep -F -- "$expected" <<<"$output" | head -1)"
  fi
}

bench=(bench comm --ops allreduce --max-bytes 4K --seconds-per-size 0.01)
expect_error "RANK=4 is out of range for WORLD_SIZE=4; valid: 0..3" RANK=4 WORLD_SIZE=4 -- "${bench[@]}"
expect_error "RANK and WORLD_SIZE must be set together" RANK=0 -- "${bench[@]}"
expect_error "MASTER_PORT=0 is invalid; valid: 1..65535" MASTER_PORT=0 RANK=0 WORLD_SIZE=1 -- "${bench[@]}"
expect_error "unknown backend 'nccl'; valid: local, gloo, mpi" FRUGAL_BACKEND=nccl RANK=0 WORLD_SIZE=1 -- "${bench[@]}"
expect_error "--backend: nccl not in" X=1 -- "${bench[@]}" --backend nccl
expect_error "--workers 0 is invalid" X=1 -- "${bench[@]}" --workers 0
# Rank 1 of 2 whose rank 0 never starts: the rendezvous times out naming the missing rank.
store=$(mktemp -d)
expect_error "0" RANK=1 WORLD_SIZE=2 FRUGAL_STORE_PATH="$store" FRUGAL_TIMEOUT_MS=2000 -- "${bench[@]}"
rm -rf "$store"
# An unreachable master: nothing listens on this loopback port.
expect_error "127.0.0.1:1" RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=1 FRUGAL_TIMEOUT_MS=2000 -- "${bench[@]}"
expect_error "A subcommand is required" X=1 -- bench nosuch
# Flags beat the environment: a 600 s FRUGAL_TIMEOUT_MS loses to --timeout-ms 2000 (else the
# missing rank 0 keeps this waiting past the 60 s limit), and a bad FRUGAL_SOCKET_IFNAME is
# named where no --iface replaces it.
store=$(mktemp -d)
expect_error "0" RANK=1 WORLD_SIZE=2 FRUGAL_STORE_PATH="$store" FRUGAL_TIMEOUT_MS=600000 -- "${bench[@]}" --timeout-ms 2000
rm -rf "$store"
expect_error "nosuch0" RANK=0 WORLD_SIZE=1 FRUGAL_SOCKET_IFNAME=nosuch0 -- "${bench[@]}" --backend gloo
cases=$((cases + 1))
if ! output=$(env RANK=0 WORLD_SIZE=1 FRUGAL_SOCKET_IFNAME=nosuch0 timeout 60 "$frugal" "${bench[@]}" --backend gloo --iface lo 2>&1); then
  echo "FAIL: --iface lo did not replace FRUGAL_SOCKET_IFNAME=nosuch0:"
  echo "$output" | sed 's/^/    /'
  failures=$((failures + 1))
else
  echo "ok: FRUGAL_SOCKET_IFNAME=nosuch0 with --iface lo runs"
fi

train=(train --steps 2 --progress off)
expect_error "--model: vgg not in" X=1 -- "${train[@]}" --model vgg
expect_error "pass --data PATH" X=1 -- "${train[@]}" --model lstm --backend local
expect_error "/nonexistent/corpus.txt" X=1 -- "${train[@]}" --model gpt-tiny --data /nonexistent/corpus.txt --backend local
expect_error "/nonexistent/fmnist" X=1 -- "${train[@]}" --data-dir /nonexistent/fmnist --backend local
expect_error "--lr-step-size" X=1 -- "${train[@]}" --lr-schedule step --backend local
expect_error "--dataset text is for language models" X=1 -- "${train[@]}" --dataset text --backend local
expect_error "--batch-size: 0 is invalid; it must be a number >= 1" X=1 -- "${train[@]}" --batch-size 0
expect_error "--workers 0 is invalid" X=1 -- "${train[@]}" --workers 0
expect_error "cannot write --metrics file" X=1 -- "${train[@]}" --backend local --metrics /nonexistent/m.jsonl
expect_error "--nesterov needs --momentum > 0" X=1 -- "${train[@]}" --backend local --nesterov --momentum 0
expect_error "--bind-cores needs LOCAL_WORLD_SIZE (the ranks on this host) beside LOCAL_RANK=1" RANK=1 WORLD_SIZE=2 LOCAL_RANK=1 -- "${train[@]}" --bind-cores
expect_error "LOCAL_RANK=2 is out of range for LOCAL_WORLD_SIZE=2; valid: 0..1" RANK=0 WORLD_SIZE=1 LOCAL_RANK=2 LOCAL_WORLD_SIZE=2 -- "${train[@]}"
expect_error "unknown compressor 'topkk'" X=1 -- "${train[@]}" --compress topkk
expect_error "density" X=1 -- "${train[@]}" --compress topk:density=2
expect_error "--compress with --sync none" X=1 -- "${train[@]}" --compress fp16 --sync none
expect_error "--fusion 'horovod' is unknown; valid: none, bytes:MB" X=1 -- "${train[@]}" --fusion horovod
expect_error "--fusion 'bytes:0': MB must be a number > 0" X=1 -- "${train[@]}" --fusion bytes:0
expect_error "--dense-below '12Q' is invalid; valid: auto" X=1 -- "${train[@]}" --dense-below 12Q
expect_error "--sync: maybe not in" X=1 -- "${train[@]}" --sync maybe
# Checkpoints.
expect_error "--resume, --checkpoint-every and --checkpoint-interval need --checkpoint-dir" X=1 -- "${train[@]}" --backend local --resume
expect_error "give --checkpoint-every or --checkpoint-interval, not both" X=1 -- "${train[@]}" --backend local --checkpoint-dir /tmp/frugal-bad-ckpt --checkpoint-every 2 --checkpoint-interval 5
expect_error "--checkpoint-mode: fast not in" X=1 -- "${train[@]}" --checkpoint-mode fast
expect_error "--checkpoint-dir /proc/frugal" X=1 -- "${train[@]}" --backend local --checkpoint-dir /proc/frugal
expect_error "FRUGAL_CKPT_FAULT='explode' is invalid; expected PHASE[@RANK][:STEP] with PHASE one of snapshot" FRUGAL_CKPT_FAULT=explode -- "${train[@]}" --checkpoint-dir /tmp/frugal-bad-ckpt
# A checkpoint of another model: the error names the first entry that does not match.
ckpt_dir=$(mktemp -d)
timeout 120 "$frugal" train --backend local --workers 1 --steps 1 --batch-size 8 --no-eval --progress off --dataset synthetic --checkpoint-dir "$ckpt_dir" >/dev/null 2>&1
expect_error "the checkpoint has no 'param/" X=1 -- train --backend local --workers 1 --steps 2 --batch-size 8 --no-eval --progress off --dataset synthetic --model cnn --checkpoint-dir "$ckpt_dir" --resume
expect_error "holds checkpoints of another run (newest: step 1); pass --resume" X=1 -- train --backend local --workers 1 --steps 2 --batch-size 8 --no-eval --progress off --dataset synthetic --checkpoint-dir "$ckpt_dir"
rm -rf "$ckpt_dir" /tmp/frugal-bad-ckpt

echo "$((cases - failures)) passed, $failures failed"
[ "$failures" -eq 0 ]
