// Learning-rate schedules: linear warm-up, then constant, cosine or step decay. LibTorch-free so
// the arithmetic is tested alone. Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace frugal {

struct LrSchedule {
  std::string kind = "cosine";  // "constant", "cosine" or "step"
  int64_t warmup_steps = 0;     // linear ramp from base/warmup_steps up to base
  double min_lr_ratio = 0.0;    // cosine: the final rate, as a fraction of base
  int64_t step_size = 0;        // step: multiply by gamma every step_size steps after warm-up
  double gamma = 0.1;           // step: the decay factor
};

const std::vector<std::string>& lr_schedule_kinds();

// Rejects an unknown kind (listing the valid ones), negative warm-up, min_lr_ratio outside
// [0, 1], a step schedule without step_size > 0, or gamma outside (0, 1].
Status validate(const LrSchedule& schedule);

// The rate for 0-based `step` of `total_steps`. Warm-up steps s < warmup_steps use
// base * (s + 1) / warmup_steps; cosine then goes from base (first step after warm-up) to
// base * min_lr_ratio (last step).
double learning_rate_at(const LrSchedule& schedule, double base, int64_t step, int64_t total_steps);

}  // namespace frugal
