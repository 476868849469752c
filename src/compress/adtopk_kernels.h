// Selection kernels behind adtopk (and usable by any exact top-k): the k largest magnitudes of a
// run of f32 values, read as raw bit patterns. Pure functions over caller memory; thread-safe
// (scratch memory is thread_local).
//
// Order: magnitude bits (bits & 0x7FFFFFFF) compared as unsigned integers, larger first, ties to
// the lower index. For finite values this is |x| order; NaN and Inf sort above every finite value,
// so a slice holding a non-finite value always selects one (compressors detect them for free).
#pragma once

#include <cstddef>
#include <cstdint>

namespace frugal::adtopk_detail {

constexpr uint32_t kMagnitudeMask = 0x7FFFFFFFu;
constexpr uint32_t kNonFiniteMagnitude = 0x7F800000u;  // magnitude bits >= this: Inf or NaN

// Writes the indices of the k largest magnitudes among bits[0, n), ascending, into out[0, k).
// When k <= n / 4 this is about one streaming pass: 16 elements at a time are compared with a
// running bound (the k-th largest magnitude kept so far) and only the few above it are kept;
// otherwise one nth_element over all n keys. `hint` (optional, in/out) carries the k-th
// magnitude from one slice to the next similar one: 7/8 of it seeds the bound (a retry without it
// keeps the result exact when the guess was too high), and the slice's own k-th magnitude is
// written back. REQUIRES: 1 <= k <= n < 2^32.
void select_top_magnitudes(const uint32_t* bits, size_t n, size_t k, uint32_t* out,
                           uint32_t* hint = nullptr);

// The same for the `inner` strided slices of a block laid out [d1][inner] (a conv weight's
// [Cin][kh*kw] for one output channel): slice j is bits[j], bits[j + inner], ...; its indices
// along d1 go to out[j * k, (j + 1) * k). Transposes the block once into scratch so every slice
// runs the contiguous kernel. REQUIRES: 1 <= k <= d1 < 2^32, inner >= 1.
void select_top_magnitudes_strided(const uint32_t* bits, size_t d1, size_t inner, size_t k,
                                   uint32_t* out, uint32_t* hint = nullptr);

// How many of bits[0, n) have magnitude bits > threshold_bits (threshold_bits <= 0x7FFFFFFF).
// REQUIRES: n < 2^32.
size_t count_magnitudes_above(const uint32_t* bits, size_t n, uint32_t threshold_bits);

// Writes the ascending indices of the elements counted above into `indices` (u32, unaligned),
// sets *non_finite iff one of them is Inf or NaN, and returns how many it wrote.
// REQUIRES: `indices` has room for count_magnitudes_above(bits, n, threshold_bits) entries.
size_t gather_indices_above(const uint32_t* bits, size_t n, uint32_t threshold_bits,
                            std::byte* indices, bool* non_finite);

}  // namespace frugal::adtopk_detail
