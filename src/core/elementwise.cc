#include "core/elementwise.h"

#include <cmath>

namespace frugal {
namespace {

// x * 2^-e rounds exactly like x / 2^e (the reciprocal is exact and both are correctly rounded
// results of the same real quotient), subnormal results included. A divisor below 2^-127 has no
// finite reciprocal, so it divides.
bool has_exact_reciprocal(float divisor) {
  int exponent = 0;
  return std::isfinite(divisor) && divisor > 0.0f && std::frexp(divisor, &exponent) == 0.5f &&
         std::isfinite(1.0f / divisor);
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void multiply(float* data,
                                                                           size_t count,
                                                                           float factor) {
  for (size_t i = 0; i < count; ++i) data[i] *= factor;
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void divide(float* data, size_t count,
                                                                         float divisor) {
  for (size_t i = 0; i < count; ++i) data[i] /= divisor;
}

}  // namespace

void divide_floats(float* data, size_t count, float divisor) {
  if (divisor == 1.0f) return;
  if (has_exact_reciprocal(divisor)) {
    multiply(data, count, 1.0f / divisor);
  } else {
    divide(data, count, divisor);
  }
}

}  // namespace frugal
