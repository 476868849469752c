#!/usr/bin/env bash
# Crash consistency of the checkpoint protocol, with real processes: `frugal train` killed
# (FRUGAL_CKPT_FAULT, SIGKILL) at every point of a save leaves only whole committed checkpoints,
# which verify and resume; truncated, bit-flipped and foreign files are named by
# `frugal ckpt verify` and skipped by --resume; a full disk and a hung rank cost a save, never the
# run; a run resumed in --deterministic mode follows the uninterrupted run's loss bit for bit.
# Independent cases run side by side on machines with cores to spare (one at a time on 2 cores:
# each run keeps both busy); the two whose timeouts are tight (full disk, hung rank) always run
# alone, at the end.
# Usage: ckpt_faults.sh path/to/frugal
set -uo pipefail
frugal="$1"
python=/usr/bin/python3
work=$(mktemp -d)
mounted=""
cleanup() {
  # Cases and runs still going (the script was interrupted): stop the cases, then the runs
  # through their `timeout`.
  local pid
  for pid in $(jobs -p); do kill "$pid" 2>/dev/null; done
  for pid in "$work"/pids/*; do [ -e "$pid" ] && kill "${pid##*/}" 2>/dev/null; done
  wait 2>/dev/null
  if [ -n "$mounted" ]; then umount "$mounted" 2>/dev/null || umount -l "$mounted" 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "ok: $*"; }
show() { sed 's/^/    /' "$1" | tail -"${2:-8}"; }
started=$SECONDS

# spawn FUNCTION ARGS...: runs it in the background, at most $slots at a time; drain waits for
# all and prints their output in the order they were spawned, counting their FAIL lines.
mkdir "$work/jobs" "$work/pids"
slots=$(($(nproc) / 4))
if [ "$slots" -lt 1 ]; then slots=1; elif [ "$slots" -gt 4 ]; then slots=4; fi
spawned=0
spawn() {
  while [ "$(jobs -rp | wc -l)" -ge "$slots" ]; do wait -n; done
  spawned=$((spawned + 1))
  "$@" >"$work/jobs/$(printf %03d "$spawned")" 2>&1 &
}
drain() {
  wait
  local out
  for out in "$work"/jobs/*; do
    [ -e "$out" ] || continue
    cat "$out"
    failures=$((failures + $(grep -c '^FAIL:' "$out")))
    rm -f "$out"
  done
}

# Small runs: 2 workers, synthetic data (quick to load); workers=N before a call changes that.
base=(--batch-size 16 --no-eval --progress off --dataset synthetic)
# train LOG ARGS...: runs `frugal train` with the base flags (and the caller's environment).
train() {
  local log="$1"; shift
  timeout 120 "$frugal" train --workers "${workers:-2}" "${base[@]}" "$@" >"$log" 2>&1 &
  local pid=$! code
  : >"$work/pids/$pid"
  wait "$pid"; code=$?
  rm -f "$work/pids/$pid"
  return "$code"
}
# The steps of DIR's committed step directories, ascending, space-separated.
committed() {
  local name steps=()
  for name in "$1"/step-*; do
    name=${name##*/}
    if [[ $name =~ ^step-([0-9]{9})$ ]]; then steps+=("$((10#${BASH_REMATCH[1]}))"); fi
  done
  echo "${steps[*]}"
}
# The names of DIR's unfinished saves (step-*.tmp-*), space-separated.
leftovers() {
  local name names=()
  for name in "$1"/step-*.tmp-*; do [ -e "$name" ] && names+=("${name##*/}"); done
  echo "${names[*]}"
}
# summary FILE KEY: one field of a --summary file (empty if missing).
summary() {
  "$python" -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ""))' \
    "$1" "$2" 2>/dev/null
}
# verify_ok LABEL DIR: `frugal ckpt verify DIR` must exit 0.
verify_ok() {
  local out
  if ! out=$(timeout 60 "$frugal" ckpt verify "$2" 2>&1); then
    fail "$1: ckpt verify $2 exited non-zero:"; echo "$out" | sed 's/^/    /'
    return 1
  fi
}
# resume_ok LABEL DIR EXPECTED_STEP ARGS...: --resume --steps 6 (no fault) exits 0 from
# EXPECTED_STEP (-1: from scratch), leaves no unfinished saves (but one named by the glob in
# $allow_left, if set), commits step 6 and (unless $verify_after is 0) verifies.
resume_ok() {
  local label="$1" dir="$2" expected="$3"; shift 3
  local log="$dir.resume.log" json="$dir.resume.json"
  if ! train "$log" --checkpoint-dir "$dir" --resume --steps 6 --summary "$json" "$@"; then
    fail "$label: resume exited non-zero:"; show "$log"; return
  fi
  local from; from=$(summary "$json" resumed_from_step)
  if [ "$from" != "$expected" ]; then
    fail "$label: resumed from step '$from', expected $expected"; show "$log"; return
  fi
  local left name; left=$(leftovers "$dir")
  for name in $left; do
    # shellcheck disable=SC2053  # $allow_left is a glob
    if [[ $name != ${allow_left:-} ]]; then
      fail "$label: unfinished saves left after the resume: $left"; return
    fi
  done
  if [[ " $(committed "$dir") " != *" 6 "* ]]; then
    fail "$label: step 6 not committed after the resume (committed: $(committed "$dir"))"; return
  fi
  if [ "${verify_after:-1}" = 1 ]; then
    verify_ok "$label (after resume)" "$dir" || return
    ok "$label: resumed from step $from, step 6 committed and verified${left:+ (left aside: $left)}"
  else
    ok "$label: resumed from step $from, step 6 committed${left:+ (left aside: $left)}"
  fi
}

# --- 1. SIGKILL at every point of the step-4 save. Sync mode commits the step-2 save before
# step 3 starts, so exactly step 2 must survive a kill before the directory rename.
# fault_case PHASE RANK MODE EXPECTED... (alternatives for the committed steps, "" = none)
fault_case() {
  local phase="$1" rank="$2" mode="$3"; shift 3
  local label="$phase@$rank:4 ($mode)" dir="$work/c1-$phase-$rank-$mode"
  local extra=(--checkpoint-every 2 --checkpoint-mode "$mode")
  if [ "$phase" = cleanup ]; then extra+=(--checkpoint-keep 1); fi
  FRUGAL_CKPT_FAULT="$phase@$rank:4" train "$dir.log" --checkpoint-dir "$dir" --steps 6 "${extra[@]}"
  local code=$?
  if [ "$code" -eq 0 ] || [ "$code" -eq 124 ]; then
    fail "$label: killed run exited $code (0: the fault did not fire, 124: hung)"; show "$dir.log"
    return
  fi
  local have; have=$(committed "$dir")
  local want matched=""
  for want in "$@"; do [ "$have" = "$want" ] && matched=1; done
  if [ -z "$matched" ]; then
    fail "$label: committed steps '$have', expected one of: $(printf "'%s' " "$@")"
    ls -la "$dir" | sed 's/^/    /'; return
  fi
  if [ "$phase" = cleanup ]; then
    # Step 2 goes aside (step-000000002.tmp-gc) before it is deleted: never half a committed dir.
    local left; left=$(leftovers "$dir")
    if [ -n "$left" ] && [ "$left" != "step-000000002.tmp-gc" ]; then
      fail "$label: unexpected leftovers '$left'"; return
    fi
  fi
  local newest=-1
  if [ -n "$have" ]; then
    newest=${have##* }
    verify_ok "$label" "$dir" || return
  fi
  ok "$label: exit $code, committed [$have], leftovers [$(leftovers "$dir")]"
  resume_ok "$label" "$dir" "$newest" "${extra[@]}"
  rm -rf "$dir"
}

# --- 2 and 3 start from a clean run with saves at 2, 4, 6, and from another run (another seed).
clean="$work/clean" other="$work/other"
clean_run() {
  if ! train "$clean.log" --checkpoint-dir "$clean" --steps 6 --checkpoint-every 2 \
       --checkpoint-keep 3; then
    fail "clean run exited non-zero:"; show "$clean.log"
  elif [ "$(committed "$clean")" != "2 4 6" ]; then
    fail "clean run committed '$(committed "$clean")', expected '2 4 6'"
  fi
}
other_run() {
  if ! train "$other.log" --checkpoint-dir "$other" --steps 4 --checkpoint-every 2 --seed 7; then
    fail "other run exited non-zero:"; show "$other.log"
  fi
}

# --- 2. Truncated and bit-flipped files in the newest checkpoint (step 6 of 2, 4, 6).
flip_byte() {  # flip_byte FILE OFFSET
  "$python" - "$1" "$2" <<'PY'
import sys
path, offset = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    f.seek(offset)
    b = f.read(1)
    f.seek(offset)
    f.write(bytes([b[0] ^ 0x01]))
PY
}
# corrupt_case KIND: corrupts a copy of the clean run's step 6, then verify and resume.
corrupt_case() {
  local kind="$1" dir="$work/c2-$1"
  cp -a "$clean" "$dir"
  local step6="$dir/step-000000006"
  local s0="$step6/shard-00000-of-00002.bin" s1="$step6/shard-00001-of-00002.bin"
  local target="" at="" size=0
  case "$kind" in
    truncate-*) target=$s1 ;;
    flip-data | flip-footer) target=$s0 ;;
    flip-manifest) target=$step6/MANIFEST ;;
  esac
  [ -n "$target" ] && size=$(stat -c %s "$target")
  case "$kind" in
    truncate-half) truncate -s $((size / 2)) "$target" ;;
    truncate-zero) truncate -s 0 "$target" ;;
    flip-data) at=$((size / 3)); flip_byte "$target" "$at" ;;
    flip-footer) at=$((size - 100)); flip_byte "$target" "$at" ;;
    # (The manifest's offset is its hash line's, wherever the flipped byte is: no bound to check.)
    flip-manifest) flip_byte "$target" $((size / 2)) ;;
    latest-garbage) printf 'step-999999999/../../etc\n\x01garbage' >"$dir/LATEST" ;;
  esac
  local out code
  out=$(timeout 60 "$frugal" ckpt verify "$dir" 2>&1); code=$?
  if [ "$kind" = latest-garbage ]; then
    # LATEST is only a hint: every committed checkpoint is still intact.
    if [ "$code" -ne 0 ]; then fail "$kind: verify exited $code:"; echo "$out" | sed 's/^/    /'; return; fi
    ok "$kind: verify exit 0 (LATEST is a hint)"
  else
    local line; line=$(grep -F "FAIL step-000000006" <<<"$out")
    if [ "$code" -ne 1 ]; then
      fail "$kind: verify exited $code, expected 1:"; echo "$out" | sed 's/^/    /'; return
    elif ! grep -qF -- "$target" <<<"$line"; then
      fail "$kind: verify does not name $target:"; echo "$out" | sed 's/^/    /'; return
    elif grep -q "^FAIL step-00000000[24]" <<<"$out"; then
      fail "$kind: verify fails an intact checkpoint:"; echo "$out" | sed 's/^/    /'; return
    fi
    if [[ $kind != truncate-zero ]]; then
      # Every message but "shorter than the header" points at a byte offset; for a flipped shard
      # byte, at or before it (the start of the chunk or footer whose hash fails).
      if [[ ! $line =~ byte\ offset\ ([0-9]+) ]]; then
        fail "$kind: verify names no byte offset: $line"; return
      elif [ -n "$at" ] && [ "${BASH_REMATCH[1]}" -gt "$at" ]; then
        fail "$kind: offset ${BASH_REMATCH[1]} is past the flipped byte $at: $line"; return
      fi
    fi
    ok "$kind: verify exit 1: ${line/$work/\$work}"
  fi
  local expected=6 allow_left="" verify_after=0
  if [ "$kind" != latest-garbage ]; then
    # The resumed run saves step 6 again: the corrupt committed step 6 is moved aside (never
    # deleted before its replacement is in place) and stays until a later save or restore.
    expected=4 allow_left="step-000000006.tmp-replaced-*"
  fi
  # One verify of a replaced step 6 is enough (each verify costs a process start).
  if [ "$kind" = flip-data ]; then verify_after=1; fi
  resume_ok "$kind" "$dir" "$expected" --checkpoint-every 2 --checkpoint-keep 3
  rm -rf "$dir"
}

# --- 3. A shard of another run (another seed, another run id) in step 4, the newest checkpoint.
foreign_case() {
  local mixed="$work/c3-mixed"
  cp -a "$clean" "$mixed"
  rm -rf "$mixed/step-000000006"
  echo step-000000004 >"$mixed/LATEST"
  local foreign="$mixed/step-000000004/shard-00001-of-00002.bin"
  cp "$other/step-000000004/shard-00001-of-00002.bin" "$foreign"
  local out code
  out=$(timeout 60 "$frugal" ckpt verify "$mixed" 2>&1); code=$?
  if [ "$code" -ne 1 ] || ! grep -F "FAIL step-000000004" <<<"$out" | grep -qF -- "$foreign"; then
    fail "foreign shard: verify exited $code without naming $foreign:"; echo "$out" | sed 's/^/    /'
    return
  fi
  local line; line=$(grep -F "FAIL step-000000004" <<<"$out")
  ok "foreign shard: verify exit 1: ${line/$work/\$work}"
  local allow_left="step-000000004.tmp-replaced-*" verify_after=0
  resume_ok "foreign shard" "$mixed" 2 --checkpoint-every 2 --checkpoint-keep 3
  rm -rf "$mixed"
}

# --- 6. Bit-exact resume in --deterministic mode: killed after step 6, resumed from step 4.
# same_losses A.jsonl B.jsonl FIRST LAST: the "loss" of steps FIRST..LAST are equal, exactly.
same_losses() {
  "$python" - "$@" <<'PY'
import json, sys
a, b, first, last = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def losses(path):
    out = {}
    for line in open(path):
        r = json.loads(line)
        if r.get("type") == "step":
            out[r["step"]] = r["loss"]
    return out
la, lb = losses(a), losses(b)
# Python floats hold the printed doubles exactly: == is bit equality, no tolerance.
bad = [s for s in range(first, last + 1) if s not in la or s not in lb or la[s] != lb[s]]
if bad:
    for s in range(first, last + 1):
        print(f"    step {s}: {la.get(s)!r} vs {lb.get(s)!r}")
    sys.exit(1)
PY
}
# exact_case NAME COMPRESS_ARGS...
exact_case() {
  local name="$1"; shift
  local d="$work/c6-$name"
  local flags=(--steps 8 --checkpoint-every 4 --deterministic --log-every 1 "$@")
  if ! train "$d-u.log" --checkpoint-dir "$d-u" --metrics "$d-u.jsonl" "${flags[@]}"; then
    fail "$name: uninterrupted run exited non-zero:"; show "$d-u.log"; return
  fi
  FRUGAL_CKPT_FAULT=step-end@1:6 train "$d-i.log" --checkpoint-dir "$d-i" --metrics "$d-i.jsonl" \
    --checkpoint-mode sync "${flags[@]}"
  local code=$?
  if [ "$code" -eq 0 ] || [ "$code" -eq 124 ]; then
    fail "$name: interrupted run exited $code"; show "$d-i.log"; return
  fi
  if [ "$(committed "$d-i")" != "4" ]; then
    fail "$name: interrupted run committed '$(committed "$d-i")', expected '4'"; return
  fi
  # The interrupted run logged steps 1..5 at least (sync saves): they must match too.
  if ! same_losses "$d-u.jsonl" "$d-i.jsonl" 1 5; then
    fail "$name: the interrupted run's losses differ from the uninterrupted run's"; return
  fi
  if [ "$name" = topk ]; then cp -a "$d-i" "$work/c6-resharded"; fi
  if ! train "$d-r.log" --checkpoint-dir "$d-i" --metrics "$d-r.jsonl" --resume \
       --summary "$d-r.json" "${flags[@]}"; then
    fail "$name: resumed run exited non-zero:"; show "$d-r.log"; return
  fi
  local from; from=$(summary "$d-r.json" resumed_from_step)
  if [ "$from" != 4 ]; then fail "$name: resumed from '$from', expected 4"; return; fi
  if ! same_losses "$d-u.jsonl" "$d-r.jsonl" 5 8; then
    fail "$name: resumed losses of steps 5..8 differ from the uninterrupted run's"; return
  fi
  ok "$name: resumed from step 4, losses of steps 5..8 equal the uninterrupted run's bit for bit"
  rm -rf "$d-u" "$d-i"
}
# Resharding: 3 workers resume the 2-worker checkpoint of exact_case topk.
resharded_case() {
  local r3="$work/c6-resharded"
  if ! workers=3 train "$r3.log" --checkpoint-dir "$r3" --resume --summary "$r3.json" \
       --steps 8 --checkpoint-every 4 --deterministic --compress 'ef(topk:density=0.01)'; then
    fail "resharded resume (2 -> 3 workers) exited non-zero:"; show "$r3.log"
  elif [ "$(summary "$r3.json" resumed_from_step)" != 4 ]; then
    fail "resharded resume: resumed_from_step '$(summary "$r3.json" resumed_from_step)', expected 4"
  elif [[ " $(committed "$r3") " != *" 8 "* ]]; then
    fail "resharded resume: step 8 not committed (committed: $(committed "$r3"))"
  elif verify_ok "resharded resume" "$r3"; then
    ok "resharded resume: 3 workers resumed the 2-worker step 4, step 8 committed and verified"
  fi
  rm -rf "$r3"
}

# First round: the kills, the clean runs that rounds 2 and 3 corrupt, the bit-exact resumes.
spawn clean_run
spawn other_run
spawn exact_case topk --compress 'ef(topk:density=0.01)'
spawn exact_case dgc
for phase in snapshot mid-write after-fsync; do
  for rank in 1 0; do spawn fault_case "$phase" "$rank" sync "2"; done
done
spawn fault_case manifest 0 sync "2"
spawn fault_case before-dir-rename 0 sync "2"
spawn fault_case latest 0 sync "2 4"
spawn fault_case cleanup 0 sync "4"
# Lazy mode: rank 0 may be stopped before it committed step 2.
spawn fault_case mid-write 1 lazy "2" ""
spawn fault_case manifest 0 lazy "2" ""
drain

# Second round: corrupted copies of the clean run; resharding.
if [ -d "$clean/step-000000006" ]; then
  for kind in truncate-half truncate-zero flip-data flip-footer flip-manifest latest-garbage; do
    spawn corrupt_case "$kind"
  done
  if [ -d "$other/step-000000004" ]; then spawn foreign_case; fi
fi
if [ -d "$work/c6-resharded" ]; then spawn resharded_case; fi
drain
one_ckpt=$(du -sb "$clean/step-000000002" 2>/dev/null | cut -f1)
rm -rf "$clean" "$other"

# --- 4. No space left: a tmpfs that holds one checkpoint but not two.
full="$work/full"
mkdir -p "$full"
if [ -z "$one_ckpt" ]; then
  fail "enospc: no checkpoint of the clean run to measure"
elif ! mount -t tmpfs -o size=$(((one_ckpt * 3 / 2 + 1048575) / 1048576))M tmpfs "$full" 2>/dev/null; then
  echo "SKIP enospc: cannot mount tmpfs"
else
  mounted="$full"
  if ! train "$work/full.log" --checkpoint-dir "$full/ck" --steps 6 --checkpoint-every 2 \
       --checkpoint-timeout 5 --summary "$work/full.json"; then
    fail "enospc: training exited non-zero:"; show "$work/full.log"
  else
    failed=$(summary "$work/full.json" checkpoints_failed)
    have=$(committed "$full/ck")
    if [ "${failed:-0}" -lt 1 ]; then
      fail "enospc: checkpoints_failed=$failed, expected >= 1 on a $((one_ckpt * 3 / 2)) byte disk"
    elif [ -z "$have" ]; then
      fail "enospc: nothing committed (one checkpoint fits)"
    elif verify_ok "enospc" "$full/ck"; then
      ok "enospc: exit 0, $failed save(s) failed, committed [$have] verified" \
         "($((one_ckpt * 3 / 2 / 1048576)) MiB disk, $((one_ckpt / 1048576)) MiB per checkpoint)"
    fi
  fi
  umount "$full" && mounted=""
fi

# --- 5. A hung rank: rank 0 abandons the save after --checkpoint-timeout; training goes on.
hung="$work/hung"
t0=$SECONDS
FRUGAL_CKPT_FAULT=hang@1:2 FRUGAL_CKPT_HANG_SECONDS=4 \
  train "$hung.log" --checkpoint-dir "$hung" --steps 6 --checkpoint-every 2 \
  --checkpoint-timeout 1 --summary "$hung.json"
code=$?
if [ "$code" -ne 0 ]; then
  fail "hang: exited $code after $((SECONDS - t0)) s (124: hung)"; show "$hung.log"
else
  failed=$(summary "$hung.json" checkpoints_failed)
  if [ "${failed:-0}" -lt 1 ]; then
    fail "hang: checkpoints_failed=$failed, expected >= 1"
  elif [[ " $(committed "$hung") " != *" 6 "* ]]; then
    fail "hang: final step 6 not committed (committed: $(committed "$hung"))"; show "$hung.log"
  elif verify_ok "hang" "$hung"; then
    ok "hang: exit 0 in $((SECONDS - t0)) s, $failed save(s) abandoned, step 6 committed and verified"
  fi
fi
rm -rf "$hung"

echo "ckpt_faults: $((SECONDS - started)) s"
if [ "$failures" -gt 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
echo "all checkpoint fault checks passed"
