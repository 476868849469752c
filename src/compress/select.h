// Magnitude selection kernels over f32 spans for the selecting sparsifiers (top-k, threshold, DGC,
// Gaussian-k, RedSync, SIDCo): exact top-k, threshold filters and the counts and statistics the
// threshold estimators search with. Pure functions over caller-owned memory; thread-safe.
//
// Every kernel works on magnitude keys, the f32 bits without the sign bit: for finite values keys
// order exactly like |x|, and Inf/NaN have keys >= kNonFiniteKey, so the largest key seen in a pass
// reports non-finite input at no extra cost. Results are identical on every ISA the kernels are
// dispatched to (sums use a fixed 32-lane association; see select.cc).
#pragma once

#include <bit>
#include <cstdint>
#include <span>
#include <vector>

namespace frugal {

inline constexpr uint32_t kNonFiniteKey = 0x7F800000u;

// |x| as an ordered integer: key(a) < key(b) iff |a| < |b| for finite a, b.
inline uint32_t magnitude_key(float x) { return std::bit_cast<uint32_t>(x) & 0x7FFFFFFFu; }
// The key of the threshold t >= 0: key(x) >= threshold_key(t) iff |x| >= t (for finite x).
inline uint32_t threshold_key(float t) { return t > 0.0f ? magnitude_key(t) : 0u; }
inline float key_value(uint32_t key) { return std::bit_cast<float>(key); }

struct FilterResult {
  int64_t count = 0;     // elements with |x| >= threshold, including any beyond out's capacity
  uint32_t max_key = 0;  // the largest magnitude key of the whole span
  bool non_finite() const { return max_key >= kNonFiniteKey; }
};

// Writes the ascending indices i with magnitude_key(x[i]) >= key into `out`, the first out.size()
// of them, and counts all of them. One pass, AVX-512 when the CPU has it.
// REQUIRES: x.size() < 2^32.
FilterResult filter_at_least(std::span<const float> x, uint32_t key, std::span<uint32_t> out);

// counts[j] = #{i : magnitude_key(x[i]) >= keys[j]} for up to kMaxCountKeys keys in one pass (a
// search evaluates several candidate thresholds per pass). Returns the largest key of the span.
inline constexpr int kMaxCountKeys = 8;
uint32_t count_at_least(std::span<const float> x, std::span<const uint32_t> keys,
                        std::span<int64_t> counts);

// Statistics of the tail {i : magnitude_key(x[i]) >= key}: its size and the sum of its |x|
// (key 0 gives the whole span's L1 norm), and the largest key of the whole span.
struct TailStats {
  int64_t count = 0;
  double abs_sum = 0;
  uint32_t max_key = 0;
  bool non_finite() const { return max_key >= kNonFiniteKey; }
};
TailStats tail_stats(std::span<const float> x, uint32_t key);

// Sum and sum of squares of the signed values, and the largest key.
struct Moments {
  double sum = 0;
  double sum_squares = 0;
  uint32_t max_key = 0;
  bool non_finite() const { return max_key >= kNonFiniteKey; }
};
Moments moments(std::span<const float> x);

// Reusable buffers of select_topk (grown on demand, never shrunk).
struct TopkScratch {
  std::vector<uint32_t> keys;
  std::vector<uint32_t> candidates;
  std::vector<uint32_t> candidate_keys;
};

// Exact top-k by magnitude: writes into out[0, k) the ascending indices of the k largest |x|; among
// equal magnitudes the lower index wins. Returns false (out unspecified) when x holds a NaN or Inf.
// Never sorts all elements: a sampled threshold, one filtering pass and nth_element over the few
// candidates, with a radix select on the key bits when the sample misses.
// REQUIRES: 0 <= k <= x.size() < 2^32, out.size() >= k.
bool select_topk(std::span<const float> x, int64_t k, std::span<uint32_t> out,
                 TopkScratch& scratch);

// The same selection restricted to `candidates` (ascending indices into x, all finite): keeps in
// place, in ascending order, the k candidates of largest |x| (lower index wins ties), returns k.
// REQUIRES: k <= candidates.size().
int64_t keep_topk_of(std::span<const float> x, std::span<uint32_t> candidates, int64_t k,
                     TopkScratch& scratch);

// Tests only: false forces the portable kernels on a CPU with AVX-512, true restores the choice by
// CPU. Not synchronized with running kernels.
void select_force_portable_kernels_for_testing(bool portable);

}  // namespace frugal
