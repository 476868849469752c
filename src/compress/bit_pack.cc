#include "compress/bit_pack.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace frugal {
namespace {

// The kernels are written as fixed-width inner loops over 8 (one output byte) or 16 (one
// accumulator block) elements so that GCC vectorizes them; lanes are combined in a fixed order,
// so every ISA clone produces the same bits.

[[gnu::always_inline]] inline uint32_t float_bits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits;
}

// 1 when the IEEE exponent is all ones (Inf or NaN).
[[gnu::always_inline]] inline uint32_t non_finite_flag(float v) {
  return (float_bits(v) & 0x7F800000u) == 0x7F800000u ? 1u : 0u;
}

template <bool kHasValues>
[[gnu::always_inline]] inline float compensated(const float* values, const float* residual,
                                                size_t i) {
  if constexpr (kHasValues) {
    return values[i] + residual[i];
  } else {
    return residual[i];
  }
}

template <bool kHasValues>
[[gnu::always_inline]] inline CompensatedSums sums_kernel(const float* values,
                                                          const float* residual, size_t n) {
  constexpr size_t kLanes = 16;
  double abs_lanes[kLanes] = {};
  double square_lanes[kLanes] = {};
  uint32_t bad = 0;
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (size_t j = 0; j < kLanes; ++j) {
      const float p = compensated<kHasValues>(values, residual, i + j);
      bad |= non_finite_flag(p);
      const auto d = static_cast<double>(p);
      abs_lanes[j] += std::fabs(d);
      square_lanes[j] += d * d;  // exact: a float squared fits in a double
    }
  }
  for (size_t j = 0; i < n; ++i, ++j) {
    const float p = compensated<kHasValues>(values, residual, i);
    bad |= non_finite_flag(p);
    const auto d = static_cast<double>(p);
    abs_lanes[j] += std::fabs(d);
    square_lanes[j] += d * d;
  }
  CompensatedSums sums;
  for (size_t j = 0; j < kLanes; ++j) {
    sums.abs_sum += abs_lanes[j];
    sums.square_sum += square_lanes[j];
  }
  sums.non_finite = bad != 0;
  return sums;
}

template <bool kHasValues>
[[gnu::always_inline]] inline void pack_compensated_block(const float* values, float* residual,
                                                          size_t begin, size_t count, float scale,
                                                          std::byte* out) {
  // Two simple loops over a block that stays in L1 vectorize; one fused loop with the byte
  // reduction and the residual store does not.
  for (size_t b = 0; b < count / 8; ++b) {
    uint32_t byte = 0;
    for (size_t j = 0; j < 8; ++j) {
      const float p = compensated<kHasValues>(values, residual, begin + 8 * b + j);
      byte |= static_cast<uint32_t>(p < 0.0f) << j;
    }
    out[begin / 8 + b] = static_cast<std::byte>(byte);
  }
  if (count % 8 != 0) {
    uint32_t byte = 0;
    for (size_t j = count / 8 * 8; j < count; ++j) {
      const float p = compensated<kHasValues>(values, residual, begin + j);
      byte |= static_cast<uint32_t>(p < 0.0f) << (j % 8);
    }
    out[begin / 8 + count / 8] = static_cast<std::byte>(byte);
  }
  for (size_t i = begin; i < begin + count; ++i) {
    const float p = compensated<kHasValues>(values, residual, i);
    residual[i] = p < 0.0f ? p + scale : p - scale;
  }
}

template <bool kHasValues>
[[gnu::always_inline]] inline void pack_compensated_kernel(const float* values, float* residual,
                                                           size_t n, float scale, std::byte* out) {
  constexpr size_t kBlock = 1024;  // a multiple of 8, so blocks start on a byte
  for (size_t begin = 0; begin < n; begin += kBlock) {
    pack_compensated_block<kHasValues>(values, residual, begin, std::min(kBlock, n - begin), scale,
                                       out);
  }
}

}  // namespace

__attribute__((target_clones("avx512f", "avx2", "default"))) bool pack_negative_bits(
    const float* values, size_t n, std::byte* out) {
  uint32_t bad = 0;
  const size_t full = n / 8;
  for (size_t b = 0; b < full; ++b) {
    uint32_t byte = 0;
    for (size_t j = 0; j < 8; ++j) {
      const float v = values[8 * b + j];
      bad |= non_finite_flag(v);
      byte |= static_cast<uint32_t>(v < 0.0f) << j;
    }
    out[b] = static_cast<std::byte>(byte);
  }
  if (full * 8 < n) {
    uint32_t byte = 0;
    for (size_t i = full * 8; i < n; ++i) {
      bad |= non_finite_flag(values[i]);
      byte |= static_cast<uint32_t>(values[i] < 0.0f) << (i % 8);
    }
    out[full] = static_cast<std::byte>(byte);
  }
  return bad != 0;
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void add_signed_bits(
    const std::byte* packed, size_t n, float magnitude, float* out) {
  const size_t full = n / 8;
  for (size_t b = 0; b < full; ++b) {
    const auto byte = static_cast<uint32_t>(packed[b]);
    for (size_t j = 0; j < 8; ++j) {
      out[8 * b + j] += ((byte >> j) & 1u) != 0 ? -magnitude : magnitude;
    }
  }
  for (size_t i = full * 8; i < n; ++i) out[i] += packed_bit(packed, i) ? -magnitude : magnitude;
}

__attribute__((target_clones("avx512f", "avx2", "default"))) CompensatedSums compensated_sums(
    const float* values, const float* residual, size_t n) {
  return values != nullptr ? sums_kernel<true>(values, residual, n)
                           : sums_kernel<false>(nullptr, residual, n);
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void pack_compensated(
    const float* values, float* residual, size_t n, float scale, std::byte* out) {
  if (values != nullptr) {
    pack_compensated_kernel<true>(values, residual, n, scale, out);
  } else {
    pack_compensated_kernel<false>(nullptr, residual, n, scale, out);
  }
}

}  // namespace frugal
