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
// When k <= n / 4: a run of up to 8192 elements (one L1 cache) is read twice, first for a lower
// bound of the k-th magnitude (the k-th largest of about 8k lane maxima), then to collect the few
// elements at or above it; a longer run is one streaming pass whose admission bound starts from
// `hint`. Either way 16 elements at a time are compared with the bound and candidates stay in
// index order, cut back to k by a radix select when their buffer fills. Otherwise one nth_element
// over all n keys. `hint` (optional, in/out) carries the k-th magnitude from one call to the next
// similar one: 9/10 of it seeds a long run's bound (a retry with less keeps the result exact when
// the guess was too high), and the run's own k-th magnitude is written back.
// REQUIRES: 1 <= k <= n < 2^32.
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

// Tests only: runs the AVX2 (where the CPU has it) or the baseline (SSE2 on x86-64) kernels
// instead of the best ones for this CPU; kByCpu restores the choice. Not synchronized with
// running kernels.
enum class KernelIsa { kByCpu, kAvx2, kBaseline };
void force_kernels_for_testing(KernelIsa isa);

}  // namespace frugal::adtopk_detail
