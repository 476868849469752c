#include "compress/adtopk_kernels.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <vector>

#include "core/status.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace frugal::adtopk_detail {
namespace {

// A candidate's sort key: magnitude in the high half, the complemented index in the low half, so
// that a larger key means a larger magnitude or, for equal magnitudes, a lower index. Keys of
// distinct elements are distinct, which makes "the k-th largest key" an exact cut.
inline uint64_t make_key(uint32_t magnitude, uint32_t index) {
  return (static_cast<uint64_t>(magnitude) << 32) | static_cast<uint64_t>(~index);
}
inline uint32_t key_index(uint64_t key) { return ~static_cast<uint32_t>(key); }
inline uint32_t key_magnitude(uint64_t key) { return static_cast<uint32_t>(key >> 32); }

struct Scratch {
  std::vector<uint64_t> keys;        // select_full's (magnitude, index) keys
  std::vector<uint32_t> magnitudes;  // the streaming selection's candidates, in index order
  std::vector<uint32_t> indices;
  std::vector<uint32_t> maxima;  // kth_lower_bound's lane maxima
  std::vector<uint32_t> transposed;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// The scan's unit: one 16-lane mask per block of 16 elements. Magnitudes are below 2^31 and every
// bound is in [-1, 2^31), so signed 32-bit compares are exact (SSE2 and AVX2 have no unsigned
// ones). Per ISA:
//   mask16(p, bound): bit j set iff magnitude(p[j]) > bound;
//   append16(p, base, mask, magnitudes, indices): appends the magnitudes and indices (base + j) of
//     the lanes set in `mask`, in lane order, and returns how many (it may write all 16 entries:
//     the buffers need room for them);
//   count_above(m, count, bound): how many of m[0, count) are > bound.
constexpr size_t kBlock = 16;
// Runs up to this many elements (32 KiB: an L1 data cache) take the two-pass selection.
constexpr size_t kShortRun = 8192;

struct ScalarOps {
  // Whether append16 takes an empty mask (appending nothing), so the scan need not branch on it.
  static constexpr bool kAppendsEmptyMasks = false;
  static uint32_t mask16(const uint32_t* p, int32_t bound) {
    uint32_t mask = 0;
    for (size_t j = 0; j < kBlock; ++j) {
      mask |= static_cast<uint32_t>(static_cast<int32_t>(p[j] & kMagnitudeMask) > bound) << j;
    }
    return mask;
  }
  static uint32_t append16(const uint32_t* p, uint32_t base, uint32_t mask, uint32_t* magnitudes,
                           uint32_t* indices) {
    uint32_t count = 0;
    do {
      const auto j = static_cast<uint32_t>(__builtin_ctz(mask));
      magnitudes[count] = p[j] & kMagnitudeMask;
      indices[count++] = base + j;
      mask &= mask - 1;
    } while (mask != 0);
    return count;
  }
  static size_t count_above(const uint32_t* m, size_t count, int32_t bound) {
    size_t above = 0;
    for (size_t j = 0; j < count; ++j) above += static_cast<int32_t>(m[j]) > bound ? 1 : 0;
    return above;
  }
  static void lane_maxima(const uint32_t* p, size_t blocks, uint32_t* maxima) {
    for (size_t j = 0; j < kBlock; ++j) maxima[j] = p[j] & kMagnitudeMask;
    for (size_t b = 1; b < blocks; ++b) {
      for (size_t j = 0; j < kBlock; ++j) {
        maxima[j] = std::max(maxima[j], p[b * kBlock + j] & kMagnitudeMask);
      }
    }
  }
};

#if defined(__x86_64__)
// SSE2 is part of the x86-64 baseline: no target attribute, no dispatch needed.
struct Sse2Ops : ScalarOps {
  static uint32_t mask16(const uint32_t* p, int32_t bound) {
    const __m128i magnitude = _mm_set1_epi32(static_cast<int32_t>(kMagnitudeMask));
    const __m128i b = _mm_set1_epi32(bound);
    __m128i c[4];
    for (int q = 0; q < 4; ++q) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 4 * q));
      c[q] = _mm_cmpgt_epi32(_mm_and_si128(v, magnitude), b);
    }
    // Saturating packs keep the lane order: 4 x i32 -> 8 x i16 -> 16 x i8.
    const __m128i packed =
        _mm_packs_epi16(_mm_packs_epi32(c[0], c[1]), _mm_packs_epi32(c[2], c[3]));
    return static_cast<uint32_t>(_mm_movemask_epi8(packed));
  }
};

struct Avx2Ops : ScalarOps {
  [[gnu::target("avx2")]] static uint32_t mask16(const uint32_t* p, int32_t bound) {
    const __m256i magnitude = _mm256_set1_epi32(static_cast<int32_t>(kMagnitudeMask));
    const __m256i b = _mm256_set1_epi32(bound);
    const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8));
    const __m256i c0 = _mm256_cmpgt_epi32(_mm256_and_si256(v0, magnitude), b);
    const __m256i c1 = _mm256_cmpgt_epi32(_mm256_and_si256(v1, magnitude), b);
    return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(c0))) |
           (static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(c1))) << 8);
  }
  [[gnu::target("avx2")]] static size_t count_above(const uint32_t* m, size_t count,
                                                    int32_t bound) {
    const __m256i b = _mm256_set1_epi32(bound);
    size_t above = 0;
    size_t j = 0;
    for (; j + 8 <= count; j += 8) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + j));
      const int lanes = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(v, b)));
      above += static_cast<size_t>(__builtin_popcount(static_cast<unsigned>(lanes)));
    }
    return above + ScalarOps::count_above(m + j, count - j, bound);
  }
  [[gnu::target("avx2")]] static void lane_maxima(const uint32_t* p, size_t blocks,
                                                  uint32_t* maxima) {
    const __m256i magnitude = _mm256_set1_epi32(static_cast<int32_t>(kMagnitudeMask));
    __m256i m0 = _mm256_setzero_si256();
    __m256i m1 = _mm256_setzero_si256();
    for (size_t b = 0; b < blocks; ++b) {
      const auto* v = reinterpret_cast<const __m256i*>(p + b * kBlock);
      m0 = _mm256_max_epu32(m0, _mm256_and_si256(_mm256_loadu_si256(v), magnitude));
      m1 = _mm256_max_epu32(m1, _mm256_and_si256(_mm256_loadu_si256(v + 1), magnitude));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(maxima), m0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(maxima + 8), m1);
  }
};

struct Avx512Ops {
  // About a fifth of the blocks of a bounded scan hold a candidate, in no pattern: a branch on
  // the mask mispredicts often enough that appending (nothing, mostly) every block costs less.
  // Only indices are appended, one compress per block; magnitudes are read back later.
  static constexpr bool kAppendsEmptyMasks = true;
  [[gnu::target("avx512f")]] static uint32_t append_indices16(uint32_t base, uint32_t mask,
                                                              uint32_t* indices) {
    const __m512i index =
        _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(base)),
                         _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    _mm512_storeu_si512(indices, _mm512_maskz_compress_epi32(static_cast<__mmask16>(mask), index));
    return static_cast<uint32_t>(__builtin_popcount(mask));
  }
  [[gnu::target("avx512f")]] static uint32_t mask16(const uint32_t* p, int32_t bound) {
    const __m512i v = _mm512_and_si512(_mm512_loadu_si512(p),
                                       _mm512_set1_epi32(static_cast<int32_t>(kMagnitudeMask)));
    return _mm512_cmpgt_epi32_mask(v, _mm512_set1_epi32(bound));
  }
  [[gnu::target("avx512f")]] static uint32_t append16(const uint32_t* p, uint32_t base,
                                                      uint32_t mask, uint32_t* magnitudes,
                                                      uint32_t* indices) {
    const auto lanes = static_cast<__mmask16>(mask);
    const __m512i v = _mm512_and_si512(_mm512_loadu_si512(p),
                                       _mm512_set1_epi32(static_cast<int32_t>(kMagnitudeMask)));
    // Compress in a register, then store all 16 lanes (the buffers keep 16 entries of room):
    // the compress-store form is several times slower on Skylake-X.
    _mm512_storeu_si512(magnitudes, _mm512_maskz_compress_epi32(lanes, v));
    const __m512i index =
        _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(base)),
                         _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    _mm512_storeu_si512(indices, _mm512_maskz_compress_epi32(lanes, index));
    return static_cast<uint32_t>(__builtin_popcount(mask));
  }
  [[gnu::target("avx512f")]] static size_t count_above(const uint32_t* m, size_t count,
                                                       int32_t bound) {
    const __m512i b = _mm512_set1_epi32(bound);
    size_t above = 0;
    size_t j = 0;
    for (; j + kBlock <= count; j += kBlock) {
      above += static_cast<size_t>(
          __builtin_popcount(_mm512_cmpgt_epi32_mask(_mm512_loadu_si512(m + j), b)));
    }
    if (j < count) {
      const auto tail = static_cast<__mmask16>((1u << (count - j)) - 1);
      above += static_cast<size_t>(__builtin_popcount(
          _mm512_mask_cmpgt_epi32_mask(tail, _mm512_maskz_loadu_epi32(tail, m + j), b)));
    }
    return above;
  }
  [[gnu::target("avx512f")]] static void lane_maxima(const uint32_t* p, size_t blocks,
                                                     uint32_t* maxima) {
    // Four running maxima: one would chain every vpmaxud on the previous one's latency. Named,
    // not an array indexed by b % 4, which GCC keeps on the stack (a store and a reload per
    // block: perf put 60% of the bound pass there). The masked max: GCC 12 warns that the
    // unmasked one's undefined source is uninitialized.
    __m512i m0 = _mm512_setzero_si512();
    __m512i m1 = _mm512_setzero_si512();
    __m512i m2 = _mm512_setzero_si512();
    __m512i m3 = _mm512_setzero_si512();
    size_t b = 0;
    for (; b + 4 <= blocks; b += 4) {
      m0 = max_magnitudes(m0, p + b * kBlock);
      m1 = max_magnitudes(m1, p + (b + 1) * kBlock);
      m2 = max_magnitudes(m2, p + (b + 2) * kBlock);
      m3 = max_magnitudes(m3, p + (b + 3) * kBlock);
    }
    for (; b < blocks; ++b) m0 = max_magnitudes(m0, p + b * kBlock);
    m0 = _mm512_mask_max_epu32(m0, 0xFFFF, m0, m1);
    m2 = _mm512_mask_max_epu32(m2, 0xFFFF, m2, m3);
    _mm512_storeu_si512(maxima, _mm512_mask_max_epu32(m0, 0xFFFF, m0, m2));
  }
  // Per lane, the larger of m and the magnitude of p[lane].
  [[gnu::target("avx512f")]] static __m512i max_magnitudes(__m512i m, const uint32_t* p) {
    const __m512i v = _mm512_and_si512(_mm512_loadu_si512(p),
                                       _mm512_set1_epi32(static_cast<int32_t>(kMagnitudeMask)));
    return _mm512_mask_max_epu32(m, 0xFFFF, m, v);
  }
};
#endif

// The k-th largest of m[0, count) (k <= count), bit by bit from the top: the largest t with at
// least k values >= t. A radix select with one-bit digits, because the candidate sets are small
// (about 4k): each digit is one vectorized count, and the cut costs a few hundred compares where
// an nth_element over (magnitude, index) keys took microseconds (perf: as long as the scan
// itself in mlp training). Only the bits below the highest one where min and max differ vary.
// With `digits` < 31 the search stops early and returns a lower bound: still at least k values
// are >= it, within a relative 2^-(digits - exponent bits that vary) of the k-th largest.
template <typename Ops>
inline uint32_t kth_largest(const uint32_t* m, size_t count, size_t k, int digits = 31) {
  uint32_t low = m[0];
  uint32_t high = m[0];
  for (size_t j = 1; j < count; ++j) {
    low = std::min(low, m[j]);
    high = std::max(high, m[j]);
  }
  if (low == high) return high;
  const int top = 31 - __builtin_clz(low ^ high);  // <= 30: magnitudes are below 2^31
  uint32_t t = high & ~((2u << top) - 1);          // <= low: every value is >= t
  for (int b = top; b >= 0 && b > top - digits; --b) {
    const uint32_t trial = t | (1u << b);
    if (Ops::count_above(m, count, static_cast<int32_t>(trial) - 1) >= k) t = trial;
  }
  return t;
}

// Keeps the top k of count >= k candidates held in index order, in place and still in index
// order: every magnitude above the k-th largest, and of those equal to it the lowest indices (ties
// go to the lower index). Returns the k-th largest magnitude.
template <typename Ops>
inline uint32_t keep_top(uint32_t* magnitudes, uint32_t* indices, size_t count, size_t k) {
  const uint32_t cut = kth_largest<Ops>(magnitudes, count, k);
  size_t equal_wanted = k - Ops::count_above(magnitudes, count, static_cast<int32_t>(cut));
  size_t kept = 0;
  for (size_t c = 0; c < count; ++c) {
    const uint32_t m = magnitudes[c];
    const bool equal = m == cut;
    const bool keep = m > cut || (equal && equal_wanted > 0);
    equal_wanted -= equal && keep ? 1 : 0;
    magnitudes[kept] = m;
    indices[kept] = indices[c];
    kept += keep ? 1 : 0;
  }
  return cut;
}

// A lower bound of the k-th largest magnitude of bits[0, n) from one pass that keeps no
// candidates: the run is cut into groups of whole 16-element blocks, each lane of each group
// keeps its maximum, and the k-th largest of those maxima (distinct elements, so at least k
// elements are >= it) is the bound. About 8k maxima make it tight: the top k elements rarely
// share a group, so the bound lands a few ranks below the k-th. `maxima` has room for
// 16 * (ceil(k / 2) + 1) + 15 entries. Returns 0 (admit everything) when the run is too short to
// group. The selection's second pass then needs no guess, no retry and few candidates.
template <typename Ops>
inline uint32_t kth_lower_bound(const uint32_t* bits, size_t n, size_t k, uint32_t* maxima) {
  const size_t blocks = n / kBlock;
  const size_t groups = (k + 1) / 2;  // 16 lanes each: about 8k maxima
  const size_t per_group = groups == 0 ? 0 : blocks / groups;
  if (per_group < 2) return 0;
  size_t count = 0;
  size_t b = 0;
  for (; b < blocks; b += per_group) {
    Ops::lane_maxima(bits + b * kBlock, std::min(per_group, blocks - b), maxima + count);
    count += kBlock;
  }
  for (size_t i = blocks * kBlock; i < n; ++i) maxima[count++] = bits[i] & kMagnitudeMask;
  // 12 digits below the top one: a bound within about 2^-9 of the k-th largest maximum.
  return kth_largest<Ops>(maxima, count, k, 12);
}

// Streaming selection. Elements are visited in index order, so a later element whose magnitude
// equals the k-th largest kept so far loses the tie: "magnitude > k-th kept" is an exact admission
// test, and that bound only rises. It starts at `bound` (a guess, -1 to admit everything); when
// the candidate buffers fill, keep_top cuts them back to k and raises the bound. Candidates stay
// in index order throughout, so the winners come out ascending with no sort. Returns false when
// fewer than k elements beat the guess (the caller retries with a lower one).
template <typename Ops>
inline bool select_streaming(const uint32_t* bits, size_t n, size_t k, uint32_t* out,
                             uint32_t* magnitudes, uint32_t* indices, size_t capacity,
                             int32_t bound, uint32_t* kth) {
  size_t count = 0;
  // Candidates [with_magnitudes, count) have their index only (append_indices16): their
  // magnitudes are read back before a cut needs them, a few L1 loads.
  size_t with_magnitudes = 0;
  const auto fill_magnitudes = [&] {
    for (; with_magnitudes < count; ++with_magnitudes) {
      magnitudes[with_magnitudes] = bits[indices[with_magnitudes]] & kMagnitudeMask;
    }
  };
  size_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    // The hardware prefetcher restarts at every 4 KiB page and every slice; asking 4 KiB ahead
    // keeps the stream going across both (measured 15-20% on 2048x2048). A prefetch never
    // faults, so running past the end is harmless; the address is formed as an integer.
    __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(bits + i) + 4096));
    const uint32_t mask = Ops::mask16(bits + i, bound);
    if constexpr (Ops::kAppendsEmptyMasks) {
      count += Ops::append_indices16(static_cast<uint32_t>(i), mask, indices + count);
    } else {
      if (mask == 0) continue;
      count += Ops::append16(bits + i, static_cast<uint32_t>(i), mask, magnitudes + count,
                             indices + count);
      with_magnitudes = count;
    }
    if (count + kBlock > capacity) {
      fill_magnitudes();
      bound = static_cast<int32_t>(keep_top<Ops>(magnitudes, indices, count, k));
      count = k;
      with_magnitudes = k;
    }
  }
  fill_magnitudes();
  for (; i < n; ++i) {
    const uint32_t m = bits[i] & kMagnitudeMask;
    if (static_cast<int32_t>(m) > bound) {
      magnitudes[count] = m;
      indices[count++] = static_cast<uint32_t>(i);
    }
  }
  if (count < k) return false;
  *kth = keep_top<Ops>(magnitudes, indices, count, k);
  std::memcpy(out, indices, k * sizeof(uint32_t));
  return true;
}

template <typename Ops>
inline size_t gather_above(const uint32_t* bits, size_t n, uint32_t threshold_bits,
                           std::byte* indices, uint32_t* non_finite) {
  const auto bound = static_cast<int32_t>(threshold_bits);
  size_t count = 0;
  uint32_t bad = 0;
  size_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    uint32_t mask = Ops::mask16(bits + i, bound);
    while (mask != 0) {
      const auto index = static_cast<uint32_t>(i + static_cast<size_t>(__builtin_ctz(mask)));
      std::memcpy(indices + 4 * count++, &index, 4);
      bad |= (bits[index] & kMagnitudeMask) >= kNonFiniteMagnitude ? 1 : 0;
      mask &= mask - 1;
    }
  }
  for (; i < n; ++i) {
    const uint32_t m = bits[i] & kMagnitudeMask;
    if (m > threshold_bits) {
      const auto index = static_cast<uint32_t>(i);
      std::memcpy(indices + 4 * count++, &index, 4);
      bad |= m >= kNonFiniteMagnitude ? 1 : 0;
    }
  }
  *non_finite = bad;
  return count;
}

// One entry point per ISA. `flatten` inlines the Ops into each, so every scan loop is compiled
// for its own target (a target-specific helper cannot be inlined into a generic template).
using StreamFn = bool (*)(const uint32_t*, size_t, size_t, uint32_t*, uint32_t*, uint32_t*, size_t,
                          int32_t, uint32_t*);
using GatherFn = size_t (*)(const uint32_t*, size_t, uint32_t, std::byte*, uint32_t*);
using BoundFn = uint32_t (*)(const uint32_t*, size_t, size_t, uint32_t*);

struct Kernels {
  StreamFn stream;
  GatherFn gather;
  BoundFn bound;
};

#if defined(__x86_64__)
[[gnu::target("avx512f"), gnu::flatten]] bool stream_avx512(const uint32_t* bits, size_t n,
                                                            size_t k, uint32_t* out,
                                                            uint32_t* magnitudes, uint32_t* indices,
                                                            size_t capacity, int32_t bound,
                                                            uint32_t* kth) {
  return select_streaming<Avx512Ops>(bits, n, k, out, magnitudes, indices, capacity, bound, kth);
}
[[gnu::target("avx2"), gnu::flatten]] bool stream_avx2(const uint32_t* bits, size_t n, size_t k,
                                                       uint32_t* out, uint32_t* magnitudes,
                                                       uint32_t* indices, size_t capacity,
                                                       int32_t bound, uint32_t* kth) {
  return select_streaming<Avx2Ops>(bits, n, k, out, magnitudes, indices, capacity, bound, kth);
}
[[gnu::target("avx512f"), gnu::flatten]] uint32_t bound_avx512(const uint32_t* bits, size_t n,
                                                               size_t k, uint32_t* maxima) {
  return kth_lower_bound<Avx512Ops>(bits, n, k, maxima);
}
[[gnu::target("avx2"), gnu::flatten]] uint32_t bound_avx2(const uint32_t* bits, size_t n, size_t k,
                                                          uint32_t* maxima) {
  return kth_lower_bound<Avx2Ops>(bits, n, k, maxima);
}
[[gnu::target("avx512f"), gnu::flatten]] size_t gather_avx512(const uint32_t* bits, size_t n,
                                                              uint32_t threshold_bits,
                                                              std::byte* indices,
                                                              uint32_t* non_finite) {
  return gather_above<Avx512Ops>(bits, n, threshold_bits, indices, non_finite);
}
[[gnu::target("avx2"), gnu::flatten]] size_t gather_avx2(const uint32_t* bits, size_t n,
                                                         uint32_t threshold_bits,
                                                         std::byte* indices, uint32_t* non_finite) {
  return gather_above<Avx2Ops>(bits, n, threshold_bits, indices, non_finite);
}
using BaselineOps = Sse2Ops;
#else
using BaselineOps = ScalarOps;
#endif

bool stream_baseline(const uint32_t* bits, size_t n, size_t k, uint32_t* out, uint32_t* magnitudes,
                     uint32_t* indices, size_t capacity, int32_t bound, uint32_t* kth) {
  return select_streaming<BaselineOps>(bits, n, k, out, magnitudes, indices, capacity, bound, kth);
}
uint32_t bound_baseline(const uint32_t* bits, size_t n, size_t k, uint32_t* maxima) {
  return kth_lower_bound<BaselineOps>(bits, n, k, maxima);
}
size_t gather_baseline(const uint32_t* bits, size_t n, uint32_t threshold_bits, std::byte* indices,
                       uint32_t* non_finite) {
  return gather_above<BaselineOps>(bits, n, threshold_bits, indices, non_finite);
}

const Kernels& chosen_by_cpu() {
  static const Kernels chosen = [] {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
      return Kernels{stream_avx512, gather_avx512, bound_avx512};
    if (__builtin_cpu_supports("avx2")) return Kernels{stream_avx2, gather_avx2, bound_avx2};
#endif
    return Kernels{stream_baseline, gather_baseline, bound_baseline};
  }();
  return chosen;
}

std::atomic<KernelIsa> forced_isa{KernelIsa::kByCpu};

const Kernels& kernels() {
  static const Kernels baseline{stream_baseline, gather_baseline, bound_baseline};
#if defined(__x86_64__)
  static const Kernels avx2{stream_avx2, gather_avx2, bound_avx2};
#endif
  switch (forced_isa.load(std::memory_order_relaxed)) {
    case KernelIsa::kBaseline:
      return baseline;
#if defined(__x86_64__)
    case KernelIsa::kAvx2:
      return __builtin_cpu_supports("avx2") ? avx2 : chosen_by_cpu();
#endif
    default:
      return chosen_by_cpu();
  }
}

// k comparable to n: one nth_element over every key, then a scan in index order emits exactly the
// keys at or above the k-th largest (keys are distinct), already ascending.
uint32_t select_full(const uint32_t* bits, size_t n, size_t k, uint32_t* out, uint64_t* keys) {
  for (size_t i = 0; i < n; ++i) {
    keys[i] = make_key(bits[i] & kMagnitudeMask, static_cast<uint32_t>(i));
  }
  std::nth_element(keys, keys + (k - 1), keys + n, std::greater<>());
  const uint64_t cut = keys[k - 1];
  size_t count = 0;
  for (size_t i = 0; i < n && count < k; ++i) {
    if (make_key(bits[i] & kMagnitudeMask, static_cast<uint32_t>(i)) >= cut) {
      out[count++] = static_cast<uint32_t>(i);
    }
  }
  return key_magnitude(cut);
}

// The guess a hint gives: `factor` times the previous slice's k-th magnitude, as a bound for
// "> bound"; -1 (admit everything) without a usable hint.
int32_t guess_bound(uint32_t hint, float factor) {
  if (hint == 0 || hint >= kNonFiniteMagnitude) return -1;
  float previous;
  std::memcpy(&previous, &hint, 4);
  const float guess = previous * factor;
  uint32_t guess_bits;
  std::memcpy(&guess_bits, &guess, 4);
  return static_cast<int32_t>(guess_bits) - 1;
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void argmax_rows(
    const uint32_t* bits, size_t rows, size_t width, uint32_t* best, uint32_t* out) {
  for (size_t j = 0; j < width; ++j) {
    best[j] = bits[j] & kMagnitudeMask;
    out[j] = 0;
  }
  for (size_t r = 1; r < rows; ++r) {
    const uint32_t* row = bits + r * width;
    for (size_t j = 0; j < width; ++j) {
      const uint32_t m = row[j] & kMagnitudeMask;
      const bool take = m > best[j];  // strictly: the lower index keeps a tie
      best[j] = take ? m : best[j];
      out[j] = take ? static_cast<uint32_t>(r) : out[j];
    }
  }
}

}  // namespace

void force_kernels_for_testing(KernelIsa isa) { forced_isa = isa; }

void select_top_magnitudes(const uint32_t* bits, size_t n, size_t k, uint32_t* out,
                           uint32_t* hint) {
  if (k >= n) {
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint32_t>(i);
    return;
  }
  Scratch& buffers = scratch();
  uint32_t kth = 0;
  if (k * 4 <= n) {
    // The candidate buffers hold 4k + 64 entries, so a cut (keep_top) happens at most once per
    // 3k admissions.
    const size_t capacity = 4 * k + 4 * kBlock;
    if (buffers.indices.size() < capacity) {
      buffers.magnitudes.resize(capacity);
      buffers.indices.resize(capacity);
    }
    uint32_t* magnitudes = buffers.magnitudes.data();
    uint32_t* indices = buffers.indices.data();
    const Kernels& chosen = kernels();
    if (n <= kShortRun) {
      // A run this short stays in L1 between two passes: the first bounds the k-th magnitude
      // from below (exact, so no retry), the second collects the few elements at or above it.
      const size_t groups = (k + 1) / 2;
      if (buffers.maxima.size() < kBlock * (2 * groups + 3)) {
        buffers.maxima.resize(kBlock * (2 * groups + 3));
      }
      const uint32_t lower = chosen.bound(bits, n, k, buffers.maxima.data());
      const bool done = chosen.stream(bits, n, k, out, magnitudes, indices, capacity,
                                      static_cast<int32_t>(lower) - 1, &kth);
      FRUGAL_CHECK(done, "fewer than k magnitudes at or above their lower bound");
    } else {
      // A long run is read once, from memory. Rows of one weight usually keep their k-th
      // magnitude within 10% of each other: 0.9 of the previous one admits few extra
      // candidates, and a miss (fewer than k above it) retries with half that guess, then with
      // none.
      const uint32_t previous = hint != nullptr ? *hint : 0;
      const int32_t bound = guess_bound(previous, 0.9f);
      bool done = chosen.stream(bits, n, k, out, magnitudes, indices, capacity, bound, &kth);
      if (!done && bound >= 0) {
        done = chosen.stream(bits, n, k, out, magnitudes, indices, capacity,
                             guess_bound(previous, 0.45f), &kth);
      }
      if (!done) chosen.stream(bits, n, k, out, magnitudes, indices, capacity, -1, &kth);
    }
  } else {
    std::vector<uint64_t>& keys = buffers.keys;
    if (keys.size() < n) keys.resize(n);
    kth = select_full(bits, n, k, out, keys.data());
  }
  if (hint != nullptr) *hint = kth;
}

void select_top_magnitudes_strided(const uint32_t* bits, size_t d1, size_t inner, size_t k,
                                   uint32_t* out, uint32_t* hint) {
  if (inner == 1) {
    select_top_magnitudes(bits, d1, k, out, hint);
    return;
  }
  std::vector<uint32_t>& transposed = scratch().transposed;
  if (k == 1) {
    // One winner per slice (every conv with Cin < 200 at density 0.01): a running argmax per
    // slice, row by row, needs no transpose and vectorizes across the slices.
    if (transposed.size() < inner) transposed.resize(inner);
    argmax_rows(bits, d1, inner, transposed.data(), out);
    if (hint != nullptr) *hint = 0;
    return;
  }
  if (transposed.size() < d1 * inner) transposed.resize(d1 * inner);
  uint32_t* t = transposed.data();
  for (size_t c = 0; c < d1; ++c) {
    for (size_t j = 0; j < inner; ++j) t[j * d1 + c] = bits[c * inner + j];
  }
  for (size_t j = 0; j < inner; ++j) select_top_magnitudes(t + j * d1, d1, k, out + j * k, hint);
}

__attribute__((target_clones("avx512f", "avx2", "default"))) size_t count_magnitudes_above(
    const uint32_t* bits, size_t n, uint32_t threshold_bits) {
  const auto bound = static_cast<int32_t>(threshold_bits);
  uint32_t count = 0;  // per call below 2^32 elements (the sparse format's u32 indices)
  for (size_t i = 0; i < n; ++i) {
    count += static_cast<int32_t>(bits[i] & kMagnitudeMask) > bound ? 1 : 0;
  }
  return count;
}

size_t gather_indices_above(const uint32_t* bits, size_t n, uint32_t threshold_bits,
                            std::byte* indices, bool* non_finite) {
  uint32_t bad = 0;
  const size_t count = kernels().gather(bits, n, threshold_bits, indices, &bad);
  *non_finite = bad != 0;
  return count;
}

}  // namespace frugal::adtopk_detail
