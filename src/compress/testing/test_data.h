// Deterministic test inputs shared by the compress/ tests. Header-only; thread-safe.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace frugal::testing {

// n standard normal floats (times `scale`) from a fixed seed.
inline std::vector<float> gaussian(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 engine(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> values(static_cast<size_t>(n));
  for (float& x : values) x = normal(engine);
  return values;
}

}  // namespace frugal::testing
