// Small statistics helpers shared by the engine's profiler and the benchmarks. Pure functions;
// thread-safe.
#pragma once

#include <algorithm>
#include <vector>

namespace frugal {

// The median of `values`: the middle one, or for an even count the higher of the two middle
// ones (always a value that was measured). 0 for no values.
inline double median(std::vector<double> values) {
  if (values.empty()) return 0.0;
  const auto middle = values.begin() + static_cast<std::ptrdiff_t>(values.size() / 2);
  std::nth_element(values.begin(), middle, values.end());
  return *middle;
}

}  // namespace frugal
