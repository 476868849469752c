// One-bit sign packing for the sign compressors (signsgd, ef-signsgd, onebit): the kernels that
// turn f32 values into sign bits and back, with error feedback fused in. Pure functions on caller
// memory; thread-safe.
//
// Layout: bit i of a packed array is bit (i % 8) of byte (i / 8), least significant bit first. A
// set bit means "negative" (value < 0); +0, -0 and positive values are "+", as DeepSpeed's
// sign().add_(1).bool() maps them. Padding bits of the last byte are zero.
#pragma once

#include <cstddef>
#include <cstdint>

namespace frugal {

// Bytes that hold `bits` bits.
inline size_t packed_bytes(int64_t bits) { return static_cast<size_t>((bits + 7) / 8); }

// Bit i of `packed` (true: negative).
inline bool packed_bit(const std::byte* packed, size_t i) {
  return ((static_cast<unsigned>(packed[i / 8]) >> (i % 8)) & 1u) != 0;
}

// Packs (values[i] < 0) for i < n into out[0, packed_bytes(n)). Returns true when some value is
// NaN or Inf (the bits are written regardless).
bool pack_negative_bits(const float* values, size_t n, std::byte* out);

// out[i] += (bit i set ? -magnitude : +magnitude) for i < n.
void add_signed_bits(const std::byte* packed, size_t n, float magnitude, float* out);

// Sums over p[i] = values[i] + residual[i] (values may be null: p = residual), i < n, in double:
// the first pass of a scaled sign, read-only so that a non-finite input leaves the residual as
// it was.
struct CompensatedSums {
  double abs_sum = 0;     // sum |p|
  double square_sum = 0;  // sum p^2
  bool non_finite = false;
};
CompensatedSums compensated_sums(const float* values, const float* residual, size_t n);

// The second pass of a scaled sign with error feedback: p = values[i] + residual[i] (values may be
// null), packs (p < 0) into out[0, packed_bytes(n)) and leaves residual[i] = p - scale * sign(p),
// sign(p) = -1 if p < 0 else +1.
void pack_compensated(const float* values, float* residual, size_t n, float scale, std::byte* out);

}  // namespace frugal
