// Fault injection for the checkpoint protocol's crash tests: FRUGAL_CKPT_FAULT names a point of
// the save protocol at which this process dies by SIGKILL (as a crash would: no destructors, no
// flushing), or hangs for a while. Spec: PHASE[@RANK][:STEP]
//   PHASE  snapshot | mid-write | after-fsync | manifest | before-dir-rename | latest | cleanup
//          (kill -9 at that point of a save), hang (the persist thread stalls for `hang_seconds`
//          before writing, as a wedged disk would), step-end (kill -9 after that training step,
//          outside any save)
//   RANK   the rank it fires on (default 0)
//   STEP   the step whose save (or end) it fires at (default: the first one reached)
// Parsed once into a value the Checkpointer owns; no global state.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/status.h"

namespace frugal::ckpt {

enum class FaultPhase : uint8_t {
  kSnapshot,
  kMidWrite,
  kAfterFsync,
  kManifest,
  kBeforeDirRename,
  kLatest,
  kCleanup,
  kHang,
  kStepEnd,
};

struct FaultPlan {
  FaultPhase phase = FaultPhase::kSnapshot;
  int rank = 0;
  std::optional<int64_t> step;
  double hang_seconds = 0;  // kHang
};

// Parses a spec; empty -> nullopt. Bad specs name the valid phases.
Result<std::optional<FaultPlan>> parse_fault_plan(std::string_view spec, double hang_seconds);

// Kills this process with SIGKILL (or sleeps, for kHang) if `plan` fires at (phase, rank, step).
void maybe_inject_fault(const std::optional<FaultPlan>& plan, FaultPhase phase, int rank,
                        int64_t step);

}  // namespace frugal::ckpt
