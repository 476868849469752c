#include "torch/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace frugal {

const std::vector<std::string>& lr_schedule_kinds() {
  static const std::vector<std::string> kinds = {"constant", "cosine", "step"};
  return kinds;
}

Status validate(const LrSchedule& s) {
  const auto& kinds = lr_schedule_kinds();
  if (std::find(kinds.begin(), kinds.end(), s.kind) == kinds.end()) {
    return invalid_argument("unknown learning-rate schedule '" + s.kind +
                            "'; valid: constant, cosine, step");
  }
  if (s.warmup_steps < 0) return invalid_argument("--warmup-steps must be >= 0");
  if (!(s.min_lr_ratio >= 0.0 && s.min_lr_ratio <= 1.0)) {
    return invalid_argument("--min-lr-ratio must be in [0, 1]");
  }
  if (s.kind == "step" && s.step_size <= 0) {
    return invalid_argument("--lr-schedule step needs --lr-step-size > 0 (steps between decays)");
  }
  if (!(s.gamma > 0.0 && s.gamma <= 1.0)) return invalid_argument("--lr-gamma must be in (0, 1]");
  return Status::ok();
}

double learning_rate_at(const LrSchedule& s, double base, int64_t step, int64_t total_steps) {
  if (step < s.warmup_steps) {
    return base * static_cast<double>(step + 1) / static_cast<double>(s.warmup_steps);
  }
  const int64_t after = step - s.warmup_steps;
  if (s.kind == "cosine") {
    const int64_t span = std::max<int64_t>(total_steps - s.warmup_steps - 1, 1);
    const double progress = std::min(static_cast<double>(after) / static_cast<double>(span), 1.0);
    const double cosine = 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
    return base * (s.min_lr_ratio + (1.0 - s.min_lr_ratio) * cosine);
  }
  if (s.kind == "step") {
    return base * std::pow(s.gamma, static_cast<double>(after / s.step_size));
  }
  return base;
}

}  // namespace frugal
