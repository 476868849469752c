#include "compress/adtopk_kernels.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <vector>

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
  std::vector<uint64_t> keys;
  std::vector<uint32_t> transposed;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// The scan's unit: one 16-lane mask per block of 16 elements. Magnitudes are below 2^31 and the
// admission bound is in [-1, 2^31), so signed 32-bit compares are exact (SSE2 and AVX2 have no
// unsigned ones). Each Ops::mask16 returns bit j set iff magnitude(p[j]) > bound.
constexpr size_t kBlock = 16;

struct ScalarOps {
  static uint32_t mask16(const uint32_t* p, int32_t bound) {
    uint32_t mask = 0;
    for (size_t j = 0; j < kBlock; ++j) {
      mask |= static_cast<uint32_t>(static_cast<int32_t>(p[j] & kMagnitudeMask) > bound) << j;
    }
    return mask;
  }
};

#if defined(__x86_64__)
// SSE2 is part of the x86-64 baseline: no target attribute, no dispatch needed.
struct Sse2Ops {
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

struct Avx2Ops {
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
};

struct Avx512Ops {
  [[gnu::target("avx512f")]] static uint32_t mask16(const uint32_t* p, int32_t bound) {
    const __m512i v = _mm512_and_si512(_mm512_loadu_si512(p),
                                       _mm512_set1_epi32(static_cast<int32_t>(kMagnitudeMask)));
    return _mm512_cmpgt_epi32_mask(v, _mm512_set1_epi32(bound));
  }
};
#endif

// Out of line on purpose: keeps the rare paths out of the scan loops.
[[gnu::noinline]] void partition_top(uint64_t* keys, size_t count, size_t k) {
  std::nth_element(keys, keys + (k - 1), keys + count, std::greater<>());
}
[[gnu::noinline]] void sort_indices(uint32_t* indices, size_t count) {
  std::sort(indices, indices + count);
}

// Streaming selection. Elements are visited in index order, so a later element whose magnitude
// equals the k-th largest kept so far loses the tie: "magnitude > k-th kept" is an exact admission
// test, and that bound only rises. It starts at `bound` (a guess, -1 to admit everything); when
// the candidate buffer fills, an nth_element keeps the top k and raises the bound. Returns false
// when fewer than k elements beat the guess (the caller retries with a lower one).
template <typename Ops>
inline bool select_streaming(const uint32_t* bits, size_t n, size_t k, uint32_t* out,
                             uint64_t* keys, size_t capacity, int32_t bound, uint32_t* kth) {
  size_t count = 0;
  bool in_index_order = true;  // until a compaction reorders the candidates
  size_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    // The hardware prefetcher restarts at every 4 KiB page and every slice; asking 4 KiB ahead
    // keeps the stream going across both (measured 15-20% on 2048x2048). A prefetch never
    // faults, so running past the end is harmless; the address is formed as an integer.
    __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(bits + i) + 4096));
    uint32_t mask = Ops::mask16(bits + i, bound);
    if (mask == 0) continue;
    do {
      const auto j = static_cast<uint32_t>(__builtin_ctz(mask));
      keys[count++] = make_key(bits[i + j] & kMagnitudeMask, static_cast<uint32_t>(i + j));
      mask &= mask - 1;
    } while (mask != 0);
    if (count + kBlock > capacity) {
      partition_top(keys, count, k);
      count = k;
      bound = static_cast<int32_t>(key_magnitude(keys[k - 1]));
      in_index_order = false;
    }
  }
  for (; i < n; ++i) {
    const uint32_t m = bits[i] & kMagnitudeMask;
    if (static_cast<int32_t>(m) > bound) keys[count++] = make_key(m, static_cast<uint32_t>(i));
  }
  if (count < k) return false;
  if (in_index_order) {
    // The usual case with a good guess: a few candidates, still in index order. Find the cut on
    // a copy (the buffer has room for it), then one pass emits the winners already ascending.
    uint64_t* copy = keys + count;
    std::memcpy(copy, keys, count * sizeof(uint64_t));
    partition_top(copy, count, k);  // also when count == k: the cut is the smallest key
    const uint64_t cut = copy[k - 1];
    *kth = key_magnitude(cut);
    size_t written = 0;
    for (size_t c = 0; c < count; ++c) {
      out[written] = key_index(keys[c]);
      written += keys[c] >= cut ? 1 : 0;
      if (written == k) break;
    }
    return true;
  }
  if (count > k) partition_top(keys, count, k);
  const uint64_t cut = keys[k - 1];
  *kth = key_magnitude(cut);
  if (k <= 32) {
    for (size_t j = 0; j < k; ++j) out[j] = key_index(keys[j]);
    sort_indices(out, k);
    return true;
  }
  // Many winners: one more scan over the (cache-resident) run emits them already in index order:
  // magnitude above the cut's, or equal to it at an index not above the cut's.
  const uint32_t cut_magnitude = key_magnitude(cut);
  const uint32_t cut_index = key_index(cut);
  const auto at_least = static_cast<int32_t>(cut_magnitude) - 1;
  size_t written = 0;
  for (i = 0; i + kBlock <= n; i += kBlock) {
    uint32_t mask = Ops::mask16(bits + i, at_least);
    while (mask != 0) {
      const auto j = static_cast<uint32_t>(__builtin_ctz(mask));
      const auto index = static_cast<uint32_t>(i + j);
      if ((bits[index] & kMagnitudeMask) > cut_magnitude || index <= cut_index) {
        out[written++] = index;
      }
      mask &= mask - 1;
    }
  }
  for (; i < n; ++i) {
    const uint32_t m = bits[i] & kMagnitudeMask;
    if (m > cut_magnitude || (m == cut_magnitude && i <= cut_index)) {
      out[written++] = static_cast<uint32_t>(i);
    }
  }
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
using StreamFn = bool (*)(const uint32_t*, size_t, size_t, uint32_t*, uint64_t*, size_t, int32_t,
                          uint32_t*);
using GatherFn = size_t (*)(const uint32_t*, size_t, uint32_t, std::byte*, uint32_t*);

struct Kernels {
  StreamFn stream;
  GatherFn gather;
};

#if defined(__x86_64__)
[[gnu::target("avx512f"), gnu::flatten]] bool stream_avx512(const uint32_t* bits, size_t n,
                                                            size_t k, uint32_t* out, uint64_t* keys,
                                                            size_t capacity, int32_t bound,
                                                            uint32_t* kth) {
  return select_streaming<Avx512Ops>(bits, n, k, out, keys, capacity, bound, kth);
}
[[gnu::target("avx2"), gnu::flatten]] bool stream_avx2(const uint32_t* bits, size_t n, size_t k,
                                                       uint32_t* out, uint64_t* keys,
                                                       size_t capacity, int32_t bound,
                                                       uint32_t* kth) {
  return select_streaming<Avx2Ops>(bits, n, k, out, keys, capacity, bound, kth);
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

bool stream_baseline(const uint32_t* bits, size_t n, size_t k, uint32_t* out, uint64_t* keys,
                     size_t capacity, int32_t bound, uint32_t* kth) {
  return select_streaming<BaselineOps>(bits, n, k, out, keys, capacity, bound, kth);
}
size_t gather_baseline(const uint32_t* bits, size_t n, uint32_t threshold_bits, std::byte* indices,
                       uint32_t* non_finite) {
  return gather_above<BaselineOps>(bits, n, threshold_bits, indices, non_finite);
}

const Kernels& kernels() {
  static const Kernels chosen = [] {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return Kernels{stream_avx512, gather_avx512};
    if (__builtin_cpu_supports("avx2")) return Kernels{stream_avx2, gather_avx2};
#endif
    return Kernels{stream_baseline, gather_baseline};
  }();
  return chosen;
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

void select_top_magnitudes(const uint32_t* bits, size_t n, size_t k, uint32_t* out,
                           uint32_t* hint) {
  if (k >= n) {
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint32_t>(i);
    return;
  }
  std::vector<uint64_t>& keys = scratch().keys;
  uint32_t kth = 0;
  if (k * 4 <= n) {
    // The candidate buffer holds 4k + 64 keys (and room for a copy), so a compaction (an
    // nth_element over about that many) happens at most once per 3k admissions.
    const size_t capacity = 4 * k + 4 * kBlock;
    if (keys.size() < 2 * capacity) keys.resize(2 * capacity);  // candidates and a copy
    const StreamFn stream = kernels().stream;
    // Rows of one weight usually keep their k-th magnitude within 10% of each other: 0.9 of
    // the previous one admits few extra candidates, and a miss (fewer than k above it) retries
    // from the cache-resident slice with half that guess, then with none.
    const uint32_t previous = hint != nullptr ? *hint : 0;
    const int32_t bound = guess_bound(previous, 0.9f);
    bool done = stream(bits, n, k, out, keys.data(), capacity, bound, &kth);
    if (!done && bound >= 0) {
      done = stream(bits, n, k, out, keys.data(), capacity, guess_bound(previous, 0.45f), &kth);
    }
    if (!done) stream(bits, n, k, out, keys.data(), capacity, -1, &kth);
  } else {
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
