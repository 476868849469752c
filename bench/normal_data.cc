#include "bench/normal_data.h"

#include <cmath>

namespace frugal::bench {

void fill_normal(std::span<float> data, uint64_t seed) {
  uint64_t state = seed;
  auto next = [&state] {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  for (size_t i = 0; i < data.size(); i += 2) {
    const double u1 = (static_cast<double>(next() >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
    const double u2 = static_cast<double>(next() >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    data[i] = static_cast<float>(r * std::cos(2 * M_PI * u2));
    if (i + 1 < data.size()) data[i + 1] = static_cast<float>(r * std::sin(2 * M_PI * u2));
  }
}

}  // namespace frugal::bench
