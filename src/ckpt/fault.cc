#include "ckpt/fault.h"

#include <array>
#include <charconv>
#include <chrono>
#include <csignal>
#include <thread>
#include <utility>

namespace frugal::ckpt {
namespace {

constexpr std::array<std::pair<std::string_view, FaultPhase>, 9> kPhases{{
    {"snapshot", FaultPhase::kSnapshot},
    {"mid-write", FaultPhase::kMidWrite},
    {"after-fsync", FaultPhase::kAfterFsync},
    {"manifest", FaultPhase::kManifest},
    {"before-dir-rename", FaultPhase::kBeforeDirRename},
    {"latest", FaultPhase::kLatest},
    {"cleanup", FaultPhase::kCleanup},
    {"hang", FaultPhase::kHang},
    {"step-end", FaultPhase::kStepEnd},
}};

template <typename Int>
bool parse_int(std::string_view text, Int& out) {
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), out);
  return error == std::errc() && end == text.data() + text.size() && out >= 0;
}

}  // namespace

Result<std::optional<FaultPlan>> parse_fault_plan(std::string_view spec, double hang_seconds) {
  if (spec.empty()) return std::optional<FaultPlan>();
  std::string valid;
  for (const auto& [name, phase] : kPhases)
    valid += (valid.empty() ? "" : ", ") + std::string(name);
  const std::string bad = "FRUGAL_CKPT_FAULT='" + std::string(spec) + "' is invalid; ";
  FaultPlan plan;
  plan.hang_seconds = hang_seconds;
  std::string_view rest = spec;
  if (const size_t colon = rest.find(':'); colon != std::string_view::npos) {
    int64_t step = 0;
    if (!parse_int(rest.substr(colon + 1), step))
      return invalid_argument(bad + "STEP must be >= 0");
    plan.step = step;
    rest = rest.substr(0, colon);
  }
  if (const size_t at = rest.find('@'); at != std::string_view::npos) {
    if (!parse_int(rest.substr(at + 1), plan.rank))
      return invalid_argument(bad + "RANK must be >= 0");
    rest = rest.substr(0, at);
  }
  for (const auto& [name, phase] : kPhases) {
    if (rest == name) {
      plan.phase = phase;
      return std::optional<FaultPlan>(plan);
    }
  }
  return invalid_argument(bad + "expected PHASE[@RANK][:STEP] with PHASE one of " + valid);
}

void maybe_inject_fault(const std::optional<FaultPlan>& plan, FaultPhase phase, int rank,
                        int64_t step) {
  if (!plan || plan->phase != phase || plan->rank != rank) return;
  if (plan->step && *plan->step != step) return;
  if (phase == FaultPhase::kHang) {
    std::this_thread::sleep_for(std::chrono::duration<double>(plan->hang_seconds));
    return;
  }
  // SIGKILL, as a crash: no destructor runs, no buffer is flushed.
  std::raise(SIGKILL);
}

}  // namespace frugal::ckpt
