// Selection kernels. The passes over whole tensors are written so that they run near memory
// bandwidth: the threshold filter has an AVX-512 version (compress-store of the matching indices)
// chosen at run time, and the statistics passes are plain loops over fixed 16/32-lane blocks that
// GCC vectorizes for each target_clones ISA. Floating-point sums accumulate lane j of every 32-wide
// block in its own f32 (or exact-product f64) lane and flush to f64 every kFlushElements, so every
// ISA adds in the same order and gets bit-identical thresholds.
#include "compress/select.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "core/status.h"

namespace frugal {
namespace {

__extension__ using Uint128 = unsigned __int128;  // GCC/Clang builtin; -Wpedantic needs the mark

constexpr size_t kLanes = 32;
constexpr size_t kFlushElements = 4096;  // f32 lane sums are flushed to f64 this often

inline uint32_t key_at(const float* x, size_t i) { return magnitude_key(x[i]); }

// ---- threshold filter -------------------------------------------------------------------------

template <bool kKeys>
__attribute__((always_inline)) inline void store_checked(uint32_t* out, uint32_t* out_keys,
                                                         size_t capacity, size_t& count,
                                                         size_t index, uint32_t key) {
  if (count < capacity) {
    out[count] = static_cast<uint32_t>(index);
    if constexpr (kKeys) out_keys[count] = key;
  }
  ++count;
}

// The portable filter: 32-element blocks whose test GCC vectorizes for the clone's ISA; blocks
// with a match write every index and advance by the match (no branch on the data).
template <bool kKeys>
__attribute__((always_inline)) inline FilterResult filter_generic_body(const float* x, size_t n,
                                                                       uint32_t key, uint32_t* out,
                                                                       uint32_t* out_keys,
                                                                       size_t capacity) {
  uint32_t lane_max[kLanes] = {};
  size_t count = 0;
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    uint32_t keys[kLanes];
    uint32_t hit = 0;
    for (size_t j = 0; j < kLanes; ++j) {
      keys[j] = key_at(x, i + j);
      lane_max[j] = std::max(lane_max[j], keys[j]);
      hit |= keys[j] >= key ? 1u : 0u;
    }
    if (hit == 0) continue;
    if (count + kLanes <= capacity) {
      for (size_t j = 0; j < kLanes; ++j) {
        out[count] = static_cast<uint32_t>(i + j);
        if constexpr (kKeys) out_keys[count] = keys[j];
        count += keys[j] >= key ? 1 : 0;
      }
    } else {
      for (size_t j = 0; j < kLanes; ++j) {
        if (keys[j] >= key) store_checked<kKeys>(out, out_keys, capacity, count, i + j, keys[j]);
      }
    }
  }
  uint32_t max_key = 0;
  for (uint32_t m : lane_max) max_key = std::max(max_key, m);
  for (; i < n; ++i) {
    const uint32_t k = key_at(x, i);
    max_key = std::max(max_key, k);
    if (k >= key) store_checked<kKeys>(out, out_keys, capacity, count, i, k);
  }
  return {static_cast<int64_t>(count), max_key};
}

__attribute__((target_clones("avx2", "default"))) FilterResult filter_generic(
    const float* x, size_t n, uint32_t key, uint32_t* out, size_t capacity) {
  return filter_generic_body<false>(x, n, key, out, nullptr, capacity);
}

__attribute__((target_clones("avx2", "default"))) FilterResult filter_keys_generic(
    const float* x, size_t n, uint32_t key, uint32_t* out, uint32_t* out_keys, size_t capacity) {
  return filter_generic_body<true>(x, n, key, out, out_keys, capacity);
}

// The AVX-512 filter; with kKeys it also stores the matching keys next to the indices (top-k then
// needs no gather of the candidates' values).
template <bool kKeys>
__attribute__((target("avx512f"), always_inline)) inline FilterResult filter_avx512_body(
    const float* x, size_t n, uint32_t key, uint32_t* out, uint32_t* out_keys, size_t capacity) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  const __m512i threshold = _mm512_set1_epi32(static_cast<int>(key));
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i sixteen = _mm512_set1_epi32(16);
  __m512i vmax = _mm512_setzero_si512();
  size_t count = 0;
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512i a = _mm512_and_si512(_mm512_loadu_si512(x + i), abs_mask);
    const __m512i b = _mm512_and_si512(_mm512_loadu_si512(x + i + 16), abs_mask);
    // maskz_ forms: the unmasked max expands to an undefined-source builtin that trips GCC 12's
    // -Wmaybe-uninitialized.
    vmax = _mm512_maskz_max_epu32(0xFFFF, vmax, _mm512_maskz_max_epu32(0xFFFF, a, b));
    const __mmask16 ma = _mm512_cmpge_epu32_mask(a, threshold);
    const __mmask16 mb = _mm512_cmpge_epu32_mask(b, threshold);
    if (count + 32 <= capacity) {
      // Branch-free: register compress + full-width store (the memory-destination compress is
      // slow on some CPUs); lanes past the matches are overwritten by the next store.
      const __m512i ia = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(i)), iota);
      const auto na = static_cast<size_t>(__builtin_popcount(ma));
      _mm512_storeu_si512(out + count, _mm512_maskz_compress_epi32(ma, ia));
      _mm512_storeu_si512(out + count + na,
                          _mm512_maskz_compress_epi32(mb, _mm512_add_epi32(ia, sixteen)));
      if constexpr (kKeys) {
        _mm512_storeu_si512(out_keys + count, _mm512_maskz_compress_epi32(ma, a));
        _mm512_storeu_si512(out_keys + count + na, _mm512_maskz_compress_epi32(mb, b));
      }
      count += na + static_cast<size_t>(__builtin_popcount(mb));
    } else if ((ma | mb) != 0) {
      for (uint32_t m = ma | (static_cast<uint32_t>(mb) << 16); m != 0; m &= m - 1) {
        const size_t index = i + static_cast<size_t>(__builtin_ctz(m));
        store_checked<kKeys>(out, out_keys, capacity, count, index, key_at(x, index));
      }
    }
  }
  // A store and a scalar max instead of _mm512_reduce_max_epu32, whose GCC 12 expansion trips
  // -Wuninitialized inside the intrinsics header.
  uint32_t lanes[16];
  _mm512_storeu_si512(lanes, vmax);
  uint32_t max_key = *std::max_element(lanes, lanes + 16);
  for (; i < n; ++i) {
    const uint32_t k = key_at(x, i);
    max_key = std::max(max_key, k);
    if (k >= key) store_checked<kKeys>(out, out_keys, capacity, count, i, k);
  }
  return {static_cast<int64_t>(count), max_key};
}

__attribute__((target("avx512f"))) FilterResult filter_avx512(const float* x, size_t n,
                                                              uint32_t key, uint32_t* out,
                                                              size_t capacity) {
  return filter_avx512_body<false>(x, n, key, out, nullptr, capacity);
}

__attribute__((target("avx512f"))) FilterResult filter_keys_avx512(const float* x, size_t n,
                                                                   uint32_t key, uint32_t* out,
                                                                   uint32_t* out_keys,
                                                                   size_t capacity) {
  return filter_avx512_body<true>(x, n, key, out, out_keys, capacity);
}

std::atomic<bool> force_portable{false};

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has && !force_portable.load(std::memory_order_relaxed);
}

// ---- counts and statistics --------------------------------------------------------------------

// GCC vector extensions: 16 lanes whatever the ISA (each clone splits them into its registers), so
// lane j always holds the same elements and sums associate identically everywhere.
typedef uint32_t U32x16 __attribute__((vector_size(64)));
typedef float F32x16 __attribute__((vector_size(64)));

// (Vector values stay inside functions: a 64-byte vector in a signature changes the ABI between
// clones, so loads are spelled out with memcpy rather than a helper.)
#define FRUGAL_LOAD_KEYS16(name, pointer) \
  U32x16 name;                            \
  std::memcpy(&name, (pointer), 64);      \
  name &= 0x7FFFFFFFu

inline uint32_t max_of_lanes(const void* vector) {
  uint32_t lanes[16];
  std::memcpy(lanes, vector, sizeof(lanes));
  return *std::max_element(lanes, lanes + 16);
}

__attribute__((target_clones("avx512f", "avx2", "default"))) uint32_t count8(const float* x,
                                                                             size_t n,
                                                                             const uint32_t* keys,
                                                                             int64_t* counts) {
  constexpr size_t kFlush = size_t{1} << 20;  // per-lane u32 counts cannot overflow
  U32x16 threshold[kMaxCountKeys];
  for (int t = 0; t < kMaxCountKeys; ++t) threshold[t] = U32x16{} + keys[t];
  U32x16 vmax{};
  size_t i = 0;
  while (i + 16 <= n) {
    U32x16 c[kMaxCountKeys] = {};
    const size_t end = i + std::min(kFlush, (n - i) / 16 * 16);
    for (; i < end; i += 16) {
      FRUGAL_LOAD_KEYS16(k, x + i);
      vmax = vmax > k ? vmax : k;
      // A true comparison is all ones (-1): subtracting it counts.
      for (int t = 0; t < kMaxCountKeys; ++t) c[t] -= (U32x16)(k >= threshold[t]);
    }
    for (int t = 0; t < kMaxCountKeys; ++t) {
      for (int j = 0; j < 16; ++j) counts[t] += c[t][j];
    }
  }
  uint32_t max_key = max_of_lanes(&vmax);
  for (; i < n; ++i) {
    const uint32_t k = key_at(x, i);
    max_key = std::max(max_key, k);
    for (int t = 0; t < kMaxCountKeys; ++t) counts[t] += k >= keys[t] ? 1 : 0;
  }
  return max_key;
}

// Lane j of the 32-lane layout (kLanes) is lane j of `low` for j < 16 and lane j - 16 of `high`.
__attribute__((target_clones("avx512f", "avx2", "default"))) TailStats tail_stats_impl(
    const float* x, size_t n, uint32_t key) {
  TailStats stats;
  const U32x16 threshold = U32x16{} + key;
  U32x16 vmax{};
  for (size_t begin = 0; begin < n; begin += kFlushElements) {
    const size_t end = std::min(n, begin + kFlushElements);
    F32x16 low{};
    F32x16 high{};
    U32x16 count{};
    size_t i = begin;
    for (; i + kLanes <= end; i += kLanes) {
      FRUGAL_LOAD_KEYS16(a, x + i);
      FRUGAL_LOAD_KEYS16(b, x + i + 16);
      vmax = vmax > a ? vmax : a;
      vmax = vmax > b ? vmax : b;
      const U32x16 in_a = (U32x16)(a >= threshold);
      const U32x16 in_b = (U32x16)(b >= threshold);
      // |x| where selected, +0.0f elsewhere (adding +0.0f leaves a lane sum unchanged).
      low += (F32x16)(a & in_a);
      high += (F32x16)(b & in_b);
      count -= in_a;
      count -= in_b;
    }
    float sum[kLanes];
    std::memcpy(sum, &low, sizeof(low));
    std::memcpy(sum + 16, &high, sizeof(high));
    for (size_t j = 0; i < end; ++i, ++j) {
      const uint32_t k = key_at(x, i);
      stats.max_key = std::max(stats.max_key, k);
      sum[j] += k >= key ? key_value(k) : 0.0f;
      stats.count += k >= key ? 1 : 0;
    }
    for (size_t j = 0; j < kLanes; ++j) stats.abs_sum += static_cast<double>(sum[j]);
    for (int j = 0; j < 16; ++j) stats.count += count[j];
  }
  stats.max_key = std::max(stats.max_key, max_of_lanes(&vmax));
  return stats;
}

__attribute__((target_clones("avx512f", "avx2", "default"))) Moments moments_impl(const float* x,
                                                                                  size_t n) {
  Moments result;
  uint32_t lane_max[kLanes] = {};
  for (size_t begin = 0; begin < n; begin += kFlushElements) {
    const size_t end = std::min(n, begin + kFlushElements);
    float sum[kLanes] = {};
    // The product of two f32 is exact in f64, so a fused multiply-add gives the same bits as a
    // multiply then add: the result does not depend on whether the compiler contracts.
    double squares[kLanes] = {};
    size_t i = begin;
    for (; i + kLanes <= end; i += kLanes) {
      for (size_t j = 0; j < kLanes; ++j) {
        const float v = x[i + j];
        lane_max[j] = std::max(lane_max[j], magnitude_key(v));
        sum[j] += v;
        squares[j] += static_cast<double>(v) * static_cast<double>(v);
      }
    }
    for (size_t j = 0; i < end; ++i, ++j) {
      const float v = x[i];
      lane_max[j] = std::max(lane_max[j], magnitude_key(v));
      sum[j] += v;
      squares[j] += static_cast<double>(v) * static_cast<double>(v);
    }
    for (size_t j = 0; j < kLanes; ++j) {
      result.sum += static_cast<double>(sum[j]);
      result.sum_squares += squares[j];
    }
  }
  for (uint32_t m : lane_max) result.max_key = std::max(result.max_key, m);
  return result;
}

// ---- exact top-k ------------------------------------------------------------------------------

// The k-th largest key and how many elements equal to it the top-k takes (the lowest indices).
struct KthKey {
  uint32_t key = 0;
  int64_t take_equal = 0;  // elements with key == `key` that belong to the top-k
  int64_t equal = 0;       // elements with key == `key` in total
};

// Radix select on the key bits: 11 + 11 + 9 bits. Returns false on a non-finite element.
bool radix_kth_key(const float* x, size_t n, int64_t k, KthKey& result, TopkScratch& scratch) {
  constexpr uint32_t kBins = 2048;
  // Level 1: the top 11 bits (sign cleared: exponent and 3 mantissa bits). Four interleaved
  // histograms so consecutive equal bins do not serialize on one counter.
  std::vector<uint32_t> hist(4 * kBins, 0);
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (size_t j = 0; j < 4; ++j) ++hist[j * kBins + (key_at(x, i + j) >> 20)];
  }
  for (; i < n; ++i) ++hist[key_at(x, i) >> 20];
  std::vector<int64_t> level(kBins, 0);
  for (uint32_t b = 0; b < kBins; ++b) {
    level[b] = int64_t{hist[b]} + hist[kBins + b] + hist[2 * kBins + b] + hist[3 * kBins + b];
  }
  if (std::any_of(level.begin() + (kNonFiniteKey >> 20), level.end(),
                  [](int64_t c) { return c != 0; })) {
    return false;
  }
  // Finds the bin holding the `remaining`-th largest element; `remaining` becomes its rank within.
  auto find_bin = [](const std::vector<int64_t>& counts, uint32_t bins, int64_t& remaining) {
    uint32_t b = bins;
    while (b > 0) {
      --b;
      if (counts[b] >= remaining) break;
      remaining -= counts[b];
    }
    return b;
  };
  int64_t remaining = k;
  const uint32_t b1 = find_bin(level, kBins, remaining);
  const int64_t in_bin = level[b1];
  if (in_bin <= std::max<int64_t>(1 << 16, static_cast<int64_t>(n / 4))) {
    // Few enough to collect: nth_element over the keys of the boundary bin.
    auto& keys = scratch.keys;
    keys.resize(static_cast<size_t>(in_bin));
    size_t m = 0;
    for (size_t t = 0; t < n; ++t) {
      const uint32_t key = key_at(x, t);
      if ((key >> 20) == b1) keys[m++] = key;
    }
    std::nth_element(keys.begin(), keys.begin() + (remaining - 1), keys.end(),
                     std::greater<uint32_t>());
    result.key = keys[static_cast<size_t>(remaining - 1)];
    int64_t greater = 0;
    int64_t equal = 0;
    for (uint32_t key : keys) {
      greater += key > result.key ? 1 : 0;
      equal += key == result.key ? 1 : 0;
    }
    result.take_equal = remaining - greater;
    result.equal = equal;
    return true;
  }
  // Level 2: the next 11 bits among the boundary bin; level 3: the last 9 bits.
  std::fill(level.begin(), level.end(), 0);
  for (size_t t = 0; t < n; ++t) {
    const uint32_t key = key_at(x, t);
    if ((key >> 20) == b1) ++level[(key >> 9) & 0x7FF];
  }
  const uint32_t b2 = find_bin(level, kBins, remaining);
  const uint32_t prefix = (b1 << 11) | b2;
  std::fill(level.begin(), level.end(), 0);
  for (size_t t = 0; t < n; ++t) {
    const uint32_t key = key_at(x, t);
    if ((key >> 9) == prefix) ++level[key & 0x1FF];
  }
  const uint32_t b3 = find_bin(level, 512, remaining);
  result.key = (prefix << 9) | b3;
  result.take_equal = remaining;
  result.equal = level[b3];
  return true;
}

// Writes the top-k of x given its k-th key into out, ascending. Returns the count written (k).
int64_t emit_topk(const float* x, size_t n, const KthKey& kth, uint32_t* out, int64_t k) {
  if (kth.take_equal == kth.equal) {
    // No tie is cut: the top-k is exactly {key >= kth}, one vectorized filter.
    auto result = cpu_has_avx512() ? filter_avx512(x, n, kth.key, out, static_cast<size_t>(k))
                                   : filter_generic(x, n, kth.key, out, static_cast<size_t>(k));
    FRUGAL_CHECK(result.count == k, "top-k filter count disagrees with the selected key");
    return k;
  }
  int64_t count = 0;
  int64_t equal_taken = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t key = key_at(x, i);
    if (key > kth.key || (key == kth.key && equal_taken < kth.take_equal)) {
      out[count++] = static_cast<uint32_t>(i);
      equal_taken += key == kth.key ? 1 : 0;
    }
  }
  return count;
}

inline uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Keeps in place, ascending, the k candidates of largest key (lower index wins ties); keys[i] is
// the key of candidates[i]. `order` is scratch.
int64_t keep_topk_keyed(std::span<uint32_t> candidates, const uint32_t* keys, int64_t k,
                        std::vector<uint32_t>& order) {
  const auto c = static_cast<int64_t>(candidates.size());
  if (k == c) return k;
  if (k == 0) return 0;
  order.assign(keys, keys + c);
  std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), std::greater<uint32_t>());
  const uint32_t kth = order[static_cast<size_t>(k - 1)];
  int64_t greater = 0;
  for (int64_t i = 0; i < c; ++i) greater += keys[i] > kth ? 1 : 0;
  const int64_t take_equal = k - greater;
  int64_t written = 0;
  int64_t equal_taken = 0;
  for (int64_t i = 0; i < c; ++i) {
    const bool equal = keys[i] == kth;
    const bool take = keys[i] > kth || (equal && equal_taken < take_equal);
    candidates[written] = candidates[i];
    written += take ? 1 : 0;
    equal_taken += take && equal ? 1 : 0;
  }
  FRUGAL_CHECK(written == k, "keep_topk_keyed selected the wrong count");
  return k;
}

// out = merge of `nonzeros` (ascending) and the k - nonzeros.size() lowest indices of zeros.
void merge_with_first_zeros(const float* x, size_t n, std::span<const uint32_t> nonzeros, int64_t k,
                            uint32_t* out) {
  size_t next_nonzero = 0;
  int64_t written = 0;
  for (size_t i = 0; i < n && written < k; ++i) {
    if (next_nonzero < nonzeros.size() && nonzeros[next_nonzero] == i) {
      out[written++] = static_cast<uint32_t>(i);
      ++next_nonzero;
    } else if (written - static_cast<int64_t>(next_nonzero) <
               k - static_cast<int64_t>(nonzeros.size())) {
      out[written++] = static_cast<uint32_t>(i);  // a zero (every non-listed element is one)
    } else {
      // Zero quota filled: the rest are the remaining nonzeros.
      while (next_nonzero < nonzeros.size()) out[written++] = nonzeros[next_nonzero++];
    }
  }
  (void)x;
}

}  // namespace

void select_force_portable_kernels_for_testing(bool portable) { force_portable = portable; }

FilterResult filter_at_least(std::span<const float> x, uint32_t key, std::span<uint32_t> out) {
  return cpu_has_avx512() ? filter_avx512(x.data(), x.size(), key, out.data(), out.size())
                          : filter_generic(x.data(), x.size(), key, out.data(), out.size());
}

uint32_t count_at_least(std::span<const float> x, std::span<const uint32_t> keys,
                        std::span<int64_t> counts) {
  FRUGAL_CHECK(keys.size() <= static_cast<size_t>(kMaxCountKeys) && counts.size() >= keys.size(),
               "count_at_least takes at most kMaxCountKeys keys");
  uint32_t padded[kMaxCountKeys];
  int64_t all[kMaxCountKeys] = {};
  for (int t = 0; t < kMaxCountKeys; ++t) {
    // UINT32_MAX is above every key, so padding counts nothing.
    padded[t] = static_cast<size_t>(t) < keys.size() ? keys[t] : UINT32_MAX;
  }
  const uint32_t max_key = count8(x.data(), x.size(), padded, all);
  for (size_t t = 0; t < keys.size(); ++t) counts[t] = all[t];
  return max_key;
}

TailStats tail_stats(std::span<const float> x, uint32_t key) {
  return tail_stats_impl(x.data(), x.size(), key);
}

Moments moments(std::span<const float> x) { return moments_impl(x.data(), x.size()); }

int64_t keep_topk_of(std::span<const float> x, std::span<uint32_t> candidates, int64_t k,
                     TopkScratch& scratch) {
  FRUGAL_CHECK(k >= 0 && static_cast<size_t>(k) <= candidates.size(),
               "keep_topk_of: k exceeds the candidates");
  if (static_cast<size_t>(k) == candidates.size()) return k;
  auto& keys = scratch.candidate_keys;
  if (keys.size() < candidates.size()) keys.resize(candidates.size());
  for (size_t i = 0; i < candidates.size(); ++i) keys[i] = magnitude_key(x[candidates[i]]);
  return keep_topk_keyed(candidates, keys.data(), k, scratch.keys);
}

bool select_topk(std::span<const float> x, int64_t k, std::span<uint32_t> out,
                 TopkScratch& scratch) {
  const size_t n = x.size();
  FRUGAL_CHECK(k >= 0 && static_cast<size_t>(k) <= n && out.size() >= static_cast<size_t>(k),
               "select_topk: k out of range");
  if (k == 0) return true;
  if (static_cast<size_t>(k) == n) {
    return !filter_at_least(x, 0, out.first(n)).non_finite();
  }
  constexpr size_t kMinSampledNumel = size_t{1} << 15;
  if (n >= kMinSampledNumel && static_cast<size_t>(k) <= n / 8) {
    // Sampled threshold: a key a few standard deviations below the sample's estimate of the k-th
    // largest, so that one filtering pass keeps all of the top-k and little else, w.h.p. The
    // sample is 16-element runs (one cache line each) at pseudo-random offsets; its only effect is
    // speed, the result is exact whatever it holds.
    constexpr size_t kRun = 16;
    const size_t samples = std::clamp<size_t>(n / 32, 1024, size_t{1} << 16) / kRun * kRun;
    auto& keys = scratch.keys;
    keys.resize(samples);
    uint64_t state = 0x5EEDu ^ n;
    for (size_t s = 0; s < samples; s += kRun) {
      const uint64_t r = splitmix64(state);
      const auto start = static_cast<size_t>((static_cast<Uint128>(r) * (n - kRun + 1)) >> 64);
      for (size_t j = 0; j < kRun; ++j) keys[s + j] = key_at(x.data(), start + j);
    }
    const double expected = static_cast<double>(k) * static_cast<double>(samples) / n;
    const auto rank = static_cast<size_t>(std::ceil(expected + 4.0 * std::sqrt(expected) + 16.0));
    if (rank <= samples) {
      std::nth_element(keys.begin(), keys.begin() + (rank - 1), keys.end(),
                       std::greater<uint32_t>());
      // Key 0 would take every element: filter the nonzeros instead (tensors that are mostly
      // exact zeros, such as embedding gradients, land here).
      const uint32_t lower = std::max<uint32_t>(keys[rank - 1], 1);
      const size_t capacity =
          static_cast<size_t>(1.5 * static_cast<double>(rank) * n / samples) + 1024;
      auto& candidates = scratch.candidates;
      auto& candidate_keys = scratch.candidate_keys;
      if (candidates.size() < capacity) candidates.resize(capacity);
      if (candidate_keys.size() < capacity) candidate_keys.resize(capacity);
      const FilterResult filtered = cpu_has_avx512()
                                        ? filter_keys_avx512(x.data(), n, lower, candidates.data(),
                                                             candidate_keys.data(), capacity)
                                        : filter_keys_generic(x.data(), n, lower, candidates.data(),
                                                              candidate_keys.data(), capacity);
      if (filtered.non_finite()) return false;
      const auto count = static_cast<size_t>(filtered.count);
      if (count >= static_cast<size_t>(k) && count <= capacity) {
        std::span<uint32_t> kept(candidates.data(), count);
        keep_topk_keyed(kept, candidate_keys.data(), k, keys);
        std::copy(kept.begin(), kept.begin() + k, out.begin());
        return true;
      }
      if (lower == 1 && count < static_cast<size_t>(k)) {
        // Fewer nonzeros than k: all of them, plus the lowest-index zeros.
        merge_with_first_zeros(x.data(), n, std::span<const uint32_t>(candidates.data(), count), k,
                               out.data());
        return true;
      }
      // The sample missed (heavy ties or an adversarial layout): exact radix select below.
    }
  }
  KthKey kth;
  if (n < kMinSampledNumel) {
    auto& keys = scratch.keys;
    keys.resize(n);
    uint32_t max_key = 0;
    for (size_t i = 0; i < n; ++i) {
      keys[i] = key_at(x.data(), i);
      max_key = std::max(max_key, keys[i]);
    }
    if (max_key >= kNonFiniteKey) return false;
    std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end(), std::greater<uint32_t>());
    kth.key = keys[k - 1];
    int64_t greater = 0;
    for (uint32_t key : keys) {
      greater += key > kth.key ? 1 : 0;
      kth.equal += key == kth.key ? 1 : 0;
    }
    kth.take_equal = k - greater;
  } else if (!radix_kth_key(x.data(), n, k, kth, scratch)) {
    return false;
  }
  emit_topk(x.data(), n, kth, out.data(), k);
  return true;
}

}  // namespace frugal
