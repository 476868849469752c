// Monotonic time helpers. CLOCK_MONOTONIC is shared by all processes on one Linux host, so
// timestamps taken by different ranks on the same machine line up in a merged trace.
#pragma once

#include <chrono>
#include <cstdint>

namespace frugal {

using SteadyClock = std::chrono::steady_clock;

inline int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             SteadyClock::now().time_since_epoch())
      .count();
}

inline double seconds_since(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

}  // namespace frugal
