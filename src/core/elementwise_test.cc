// divide_floats against the plain scalar quotient, bit for bit, over normal, subnormal, huge,
// signed-zero and non-finite values and divisors that are and are not powers of two.
#include "core/elementwise.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace frugal {
namespace {

std::vector<float> awkward_values() {
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          -3.0f,
                          std::numeric_limits<float>::denorm_min(),
                          -std::numeric_limits<float>::denorm_min() * 3,
                          std::numeric_limits<float>::min(),
                          std::numeric_limits<float>::max(),
                          -std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN()};
  std::mt19937 engine(7);
  for (int i = 0; i < 1000; ++i) v.push_back(std::bit_cast<float>(static_cast<uint32_t>(engine())));
  return v;
}

TEST(DivideFloats, EqualsTheScalarQuotientBitForBit) {
  const std::vector<float> input = awkward_values();
  for (float divisor : {1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 7.0f, 8.0f, 0.5f, 1024.0f, 0.1f}) {
    std::vector<float> got = input;
    divide_floats(got.data(), got.size(), divisor);
    for (size_t i = 0; i < input.size(); ++i) {
      volatile float numerator = input[i];  // a plain division, not folded into a multiply
      const float expected = numerator / divisor;
      if (std::isnan(expected)) {
        ASSERT_TRUE(std::isnan(got[i])) << "divisor " << divisor << " element " << i;
      } else {
        ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(expected))
            << "divisor " << divisor << " value " << input[i];
      }
    }
  }
}

}  // namespace
}  // namespace frugal
