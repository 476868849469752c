// Selection kernels against brute-force references: exact top-k (a stably sorted copy, ties to
// the lower index), the threshold filter, counts, tail statistics and the non-finite reports.
#include "compress/select.h"
#include "compress/testing/test_data.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include <gtest/gtest.h>

namespace frugal {
namespace {

using testing::gaussian;

// Ties on purpose: values on a coarse grid of quarters, signs mixed, a share of exact zeros.
std::vector<float> tied(size_t n, uint32_t seed) {
  std::vector<float> v = gaussian(n, seed);
  for (size_t i = 0; i < n; ++i) v[i] = (i % 5 == 0) ? 0.0f : std::round(v[i] * 4.0f) / 4.0f;
  return v;
}

// The reference: indices stably sorted by |x| descending (so the lower index wins ties), the
// first k, ascending.
std::vector<uint32_t> reference_order(const std::vector<float>& x) {
  std::vector<uint32_t> order(x.size());
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(),
                   [&](uint32_t a, uint32_t b) { return std::fabs(x[a]) > std::fabs(x[b]); });
  return order;
}

std::vector<uint32_t> reference_topk(const std::vector<float>& x, size_t k) {
  std::vector<uint32_t> order = reference_order(x);
  order.resize(k);
  std::sort(order.begin(), order.end());
  return order;
}

std::vector<uint32_t> topk(const std::vector<float>& x, size_t k, bool* finite = nullptr) {
  TopkScratch scratch;
  std::vector<uint32_t> out(k + 3, 0xDEADBEEF);
  const bool ok = select_topk(x, static_cast<int64_t>(k), out, scratch);
  if (finite != nullptr) *finite = ok;
  EXPECT_EQ(out[k], 0xDEADBEEF) << "wrote beyond k";
  out.resize(k);
  return out;
}

TEST(SelectTopkTest, MatchesSortedReferenceAcrossSizesAndDensities) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{1000}, size_t{100003}}) {
    for (double density : {0.0, 0.001, 0.01, 0.1, 0.3, 0.999, 1.0}) {
      const auto k = static_cast<size_t>(density * static_cast<double>(n));
      for (int kind = 0; kind < 2; ++kind) {
        const auto x = kind == 0 ? gaussian(n, static_cast<uint32_t>(n + k)) : tied(n, 5);
        ASSERT_EQ(topk(x, k), reference_topk(x, k))
            << "n=" << n << " k=" << k << (kind == 0 ? " gaussian" : " tied");
      }
    }
  }
}

TEST(SelectTopkTest, TiesGoToTheLowerIndex) {
  // Eight equal magnitudes (signs differ) around larger and smaller values.
  std::vector<float> x = {1, -3, 3, 0.5f, 3, -3, 7, 3, 3, -3, 3, 2};
  EXPECT_EQ(topk(x, 1), (std::vector<uint32_t>{6}));
  EXPECT_EQ(topk(x, 3), (std::vector<uint32_t>{1, 2, 6}));
  EXPECT_EQ(topk(x, 9), (std::vector<uint32_t>{1, 2, 4, 5, 6, 7, 8, 9, 10}));
  std::vector<float> zeros(70000, 0.0f);
  zeros[5] = -0.0f;  // -0 and +0 have the same magnitude
  EXPECT_EQ(topk(zeros, 3), (std::vector<uint32_t>{0, 1, 2}));
}

TEST(SelectTopkTest, LargeInputsOnEveryPath) {
  // Sampled path, mostly-zero tensors (fewer nonzeros than k), magnitudes sorted ascending (the
  // sample sees the layout), and heavy ties that force the radix select.
  const size_t n = 300007;
  std::vector<std::vector<float>> inputs;
  inputs.push_back(gaussian(n, 1));
  std::vector<float> sparse(n, 0.0f);
  for (size_t i = 17; i < n; i += 997) sparse[i] = static_cast<float>(i % 13) - 6.0f;
  inputs.push_back(sparse);
  std::vector<float> ascending = gaussian(n, 2);
  std::sort(ascending.begin(), ascending.end(),
            [](float a, float b) { return std::fabs(a) < std::fabs(b); });
  inputs.push_back(ascending);
  std::vector<float> coarse(n);
  for (size_t i = 0; i < n; ++i) coarse[i] = static_cast<float>((i * 7919) % 3) - 1.0f;
  inputs.push_back(coarse);
  for (size_t input = 0; input < inputs.size(); ++input) {
    const std::vector<uint32_t> order = reference_order(inputs[input]);
    for (size_t k : {size_t{1}, size_t{300}, size_t{3000}, size_t{30000}, size_t{150000}}) {
      std::vector<uint32_t> expected(order.begin(), order.begin() + static_cast<ptrdiff_t>(k));
      std::sort(expected.begin(), expected.end());
      ASSERT_EQ(topk(inputs[input], k), expected) << "input " << input << " k=" << k;
    }
  }
}

TEST(SelectTopkTest, NonFiniteAnywhereIsReported) {
  for (size_t n : {size_t{7}, size_t{1000}, size_t{100003}}) {
    for (size_t position : {size_t{0}, n / 2, n - 1}) {
      for (float bad :
           {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
            -std::numeric_limits<float>::infinity()}) {
        auto x = gaussian(n, 3);
        x[position] = bad;
        for (size_t k : {size_t{1}, n / 100 + 1, n}) {
          bool finite = true;
          topk(x, k, &finite);
          EXPECT_FALSE(finite) << "n=" << n << " position " << position << " k=" << k;
        }
        EXPECT_TRUE(filter_at_least(x, threshold_key(1e30f), {}).non_finite());
        EXPECT_TRUE(tail_stats(x, 0).non_finite());
        EXPECT_TRUE(moments(x).non_finite());
        int64_t count = 0;
        const uint32_t key = 0;
        EXPECT_GE(count_at_least(x, {&key, 1}, {&count, 1}), kNonFiniteKey);
      }
    }
  }
}

TEST(SelectFilterTest, SelectsExactlyTheElementsAtOrAboveTheThreshold) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{31}, size_t{1000}, size_t{100003}}) {
    auto x = tied(n, 9);
    for (float t : {0.0f, 0.25f, 1.0f, 2.5f, 100.0f}) {
      std::vector<uint32_t> expected;
      for (size_t i = 0; i < n; ++i) {
        if (std::fabs(x[i]) >= t) expected.push_back(static_cast<uint32_t>(i));
      }
      std::vector<uint32_t> out(n);
      const FilterResult result = filter_at_least(x, threshold_key(t), out);
      ASSERT_EQ(result.count, static_cast<int64_t>(expected.size())) << "n=" << n << " t=" << t;
      out.resize(expected.size());
      EXPECT_EQ(out, expected);
      EXPECT_FALSE(result.non_finite());
      // A small output keeps the first entries and still counts all of them.
      std::vector<uint32_t> small(std::min<size_t>(expected.size(), 5));
      EXPECT_EQ(filter_at_least(x, threshold_key(t), small).count, result.count);
      EXPECT_TRUE(std::equal(small.begin(), small.end(), expected.begin()));
    }
  }
}

TEST(SelectCountTest, CountsAndTailStatisticsMatchBruteForce) {
  for (size_t n : {size_t{0}, size_t{5}, size_t{4099}, size_t{100003}}) {
    const auto x = gaussian(n, 11);
    const std::vector<uint32_t> keys = {0,
                                        threshold_key(0.1f),
                                        threshold_key(0.5f),
                                        threshold_key(1.0f),
                                        threshold_key(2.0f),
                                        threshold_key(3.0f),
                                        threshold_key(9.0f)};
    std::vector<int64_t> counts(keys.size());
    count_at_least(x, keys, counts);
    for (size_t t = 0; t < keys.size(); ++t) {
      const float threshold = key_value(keys[t]);
      int64_t expected = 0;
      double sum = 0;
      for (float v : x) {
        if (std::fabs(v) >= threshold) {
          ++expected;
          sum += std::fabs(v);
        }
      }
      EXPECT_EQ(counts[t], expected) << "n=" << n << " t=" << threshold;
      const TailStats tail = tail_stats(x, keys[t]);
      EXPECT_EQ(tail.count, expected);
      EXPECT_NEAR(tail.abs_sum, sum, 1e-5 * (1 + sum));
    }
    double sum = 0;
    double squares = 0;
    for (float v : x) {
      sum += v;
      squares += static_cast<double>(v) * v;
    }
    const Moments m = moments(x);
    EXPECT_NEAR(m.sum, sum, 1e-5 * (1 + std::sqrt(squares)));
    EXPECT_NEAR(m.sum_squares, squares, 1e-9 * (1 + squares));
  }
}

TEST(SelectTopkTest, KeepTopkOfCandidates) {
  const auto x = tied(5000, 4);
  std::vector<uint32_t> candidates;
  for (uint32_t i = 0; i < 5000; i += 3) candidates.push_back(i);
  std::vector<float> restricted;
  for (uint32_t i : candidates) restricted.push_back(x[i]);
  TopkScratch scratch;
  for (int64_t k : {0, 1, 100, 1667}) {
    auto kept = candidates;
    ASSERT_EQ(keep_topk_of(x, kept, k, scratch), k);
    std::vector<uint32_t> expected;
    for (uint32_t r : reference_topk(restricted, static_cast<size_t>(k))) {
      expected.push_back(candidates[r]);
    }
    kept.resize(static_cast<size_t>(k));
    EXPECT_EQ(kept, expected) << "k=" << k;
  }
}

// The portable kernels (what a CPU without AVX-512 runs) on the filter and top-k paths.
TEST(SelectPortableTest, PortableKernelsMatchTheReferenceToo) {
  select_force_portable_kernels_for_testing(true);
  for (size_t n : {size_t{1000}, size_t{100003}}) {
    const auto x = tied(n, 21);
    const std::vector<uint32_t> order = reference_order(x);
    for (size_t k : {size_t{1}, n / 100, n / 3}) {
      std::vector<uint32_t> expected(order.begin(), order.begin() + static_cast<ptrdiff_t>(k));
      std::sort(expected.begin(), expected.end());
      EXPECT_EQ(topk(x, k), expected) << "n=" << n << " k=" << k;
    }
    std::vector<uint32_t> out(n);
    const FilterResult all = filter_at_least(x, 0, out);
    EXPECT_EQ(all.count, static_cast<int64_t>(n));
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], i);
    auto bad = x;
    bad[n - 1] = std::numeric_limits<float>::infinity();
    EXPECT_TRUE(filter_at_least(bad, threshold_key(0.5f), out).non_finite());
    bool finite = true;
    topk(bad, n / 100, &finite);
    EXPECT_FALSE(finite);
  }
  select_force_portable_kernels_for_testing(false);
}

}  // namespace
}  // namespace frugal
