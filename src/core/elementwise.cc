#include "core/elementwise.h"

#include <cmath>
#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

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

// dst = src * factor (kMultiply) or src / operand, streamed. SSE's 16-byte streaming store is
// part of x86-64 itself, so no dispatch is needed: the write-combining buffers merge four of them
// into one line, and the loop is bound by memory, not by its width.
template <bool kMultiply>
void stream_quotient(float* dst, const float* src, size_t count, float operand) {
  auto one = [operand](float x) { return kMultiply ? x * operand : x / operand; };
  size_t i = 0;
#if defined(__x86_64__)
  for (; i < count && reinterpret_cast<uintptr_t>(dst + i) % 16 != 0; ++i) dst[i] = one(src[i]);
  const __m128 op = _mm_set1_ps(operand);
  for (; i + 4 <= count; i += 4) {
    const __m128 x = _mm_loadu_ps(src + i);
    _mm_stream_ps(dst + i, kMultiply ? _mm_mul_ps(x, op) : _mm_div_ps(x, op));
  }
#endif
  for (; i < count; ++i) dst[i] = one(src[i]);
#if defined(__x86_64__)
  _mm_sfence();  // streaming stores are weakly ordered: publish them before returning
#endif
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

void divide_floats_streaming(float* dst, const float* src, size_t count, float divisor) {
  if (has_exact_reciprocal(divisor)) {  // 1 included: a streamed copy
    stream_quotient<true>(dst, src, count, 1.0f / divisor);
  } else {
    stream_quotient<false>(dst, src, count, divisor);
  }
}

}  // namespace frugal
