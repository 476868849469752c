// divide_floats and divide_floats_streaming against the plain scalar quotient, bit for bit, over
// normal, subnormal, huge, signed-zero and non-finite values and divisors that are and are not
// powers of two.
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

// The streamed quotient against the same scalar reference, for every alignment of the
// destination (its vector loop needs 16-byte alignment, so heads and tails are scalar) and counts
// that leave each possible tail; elements around the destination range stay untouched.
TEST(DivideFloatsStreaming, EqualsTheScalarQuotientAtEveryAlignmentAndLength) {
  const std::vector<float> input = awkward_values();
  for (float divisor : {1.0f, 4.0f, 3.0f, 0.1f}) {
    for (size_t offset = 0; offset < 4; ++offset) {
      for (size_t count : {size_t{0}, size_t{1}, size_t{3}, size_t{4}, size_t{5}, size_t{17},
                           size_t{37}, input.size() - 4}) {
        std::vector<float> out(count + 8, 42.0f);
        divide_floats_streaming(out.data() + offset, input.data(), count, divisor);
        for (size_t i = 0; i < out.size(); ++i) {
          if (i < offset || i >= offset + count) {
            ASSERT_EQ(out[i], 42.0f) << "wrote outside the range at " << i;
            continue;
          }
          volatile float numerator = input[i - offset];
          const float expected = numerator / divisor;
          const float got = out[i];
          if (std::isnan(expected)) {
            ASSERT_TRUE(std::isnan(got)) << "divisor " << divisor << " element " << i;
          } else {
            ASSERT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(expected))
                << "divisor " << divisor << " offset " << offset << " count " << count << " value "
                << input[i - offset];
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace frugal
