// randomk's own semantics: shared, distinct, ascending and uniformly spread indices; density 1 is
// lossless; unbiased=true is unbiased (statistical test, fixed seeds); the sum aggregation equals
// the average of the ranks' own decodes; payload size, corrupt payloads and non-finite values.
#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <map>
#include <random>

#include <gtest/gtest.h>

#include "compress/registry.h"
#include "compress/testing/compressors.h"
#include "compress/testing/serial_exchange.h"
#include "compress/testing/test_data.h"

namespace frugal {
namespace {

std::unique_ptr<Compressor> make(const std::string& spec, uint64_t seed = 7, int world = 1) {
  return testing::make_or_fail(spec, seed, world);
}

using testing::gaussian;

std::vector<std::byte> compress(Compressor& c, TensorId id, const std::vector<float>& grad,
                                int64_t step) {
  std::vector<std::byte> out(c.max_compressed_bytes(id));
  auto used = c.compress(id, {grad.data(), DType::kF32, c.tensor(id).shape}, out, {step, 0});
  EXPECT_TRUE(used.is_ok()) << used.status().to_string();
  out.resize(used.is_ok() ? *used : 0);
  return out;
}

// Compresses `grad` at `step` and adds this rank's own decode into `accum`.
void round_trip(Compressor& c, TensorId id, const std::vector<float>& grad, int64_t step,
                std::vector<float>& accum) {
  auto payload = compress(c, id, grad, step);
  ASSERT_TRUE(c.decompress_accumulate(id, payload, {accum.data(), DType::kF32, c.tensor(id).shape})
                  .is_ok());
}

// The indices a compressor picks at `step`, read back by decoding x_i = i + 1 (exact in f32 for
// n < 2^24). Fails the test when an index is picked twice (its value would be doubled).
std::vector<int64_t> picked(Compressor& c, TensorId id, int64_t step) {
  const int64_t n = shape_numel(c.tensor(id).shape);
  std::vector<float> ramp(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ramp[i] = static_cast<float>(i + 1);
  std::vector<float> accum(ramp.size(), 0.0f);
  round_trip(c, id, ramp, step, accum);
  std::vector<int64_t> indices;
  for (int64_t i = 0; i < n; ++i) {
    if (accum[i] == 0.0f) continue;
    EXPECT_EQ(accum[i], ramp[i]) << "index " << i << " picked more than once";
    indices.push_back(i);
  }
  return indices;
}

int64_t expected_k(int64_t n, double density) {
  if (n == 0) return 0;
  return std::clamp<int64_t>(static_cast<int64_t>(std::floor(density * n + 1e-9)), 1, n);
}

TEST(RandomKTest, SpecIsCanonical) {
  EXPECT_EQ(make("randomk")->spec(), "randomk:density=0.01,unbiased=false");
  EXPECT_EQ(make("randomk:unbiased=1,density=0.5")->spec(), "randomk:density=0.5,unbiased=true");
  EXPECT_EQ(make("fp16(randomk:density=0.1)")->spec(), "fp16(randomk:density=0.1,unbiased=false)");
  EXPECT_EQ(make("bf16(randomk)")->spec(), "bf16(randomk:density=0.01,unbiased=false)");
  EXPECT_FALSE(make_compressor("randomk:unbiased=maybe", {}).is_ok());
}

// k = max(1, floor(density * n)) values of the payload dtype; no indices on the wire.
TEST(RandomKTest, PayloadIsKValues) {
  struct Case {
    const char* spec;
    double density;
    DType dtype;
  };
  for (const Case& c : {Case{"randomk:density=0.29", 0.29, DType::kF32},
                        Case{"randomk:density=0.01", 0.01, DType::kF32},
                        Case{"fp16(randomk:density=0.07)", 0.07, DType::kF16},
                        Case{"bf16(randomk:density=1)", 1.0, DType::kBF16}}) {
    auto r = make(c.spec);
    EXPECT_EQ(r->aggregation(), Aggregation::kSum);
    EXPECT_EQ(r->payload_dtype(), c.dtype);
    EXPECT_TRUE(r->fixed_size());
    for (int64_t n : {0, 1, 7, 99, 100, 1000, 100003}) {
      TensorId id = r->register_tensor({"t" + std::to_string(n), {n}}).value();
      EXPECT_EQ(r->max_compressed_bytes(id),
                static_cast<size_t>(expected_k(n, c.density)) * dtype_size(c.dtype))
          << c.spec << " n=" << n;
    }
  }
}

// Every path of the sampler (sorted set for small k, bitmap, complement for k > n/2, all):
// exactly k distinct indices, identical on two "ranks", different for another step, tensor name
// or job seed.
TEST(RandomKTest, IndicesAreSharedDistinctAndChangeWithStepNameAndSeed) {
  const int64_t n = 100000;
  for (double density : {0.0001, 0.001, 0.01, 0.3, 0.7, 0.999, 1.0}) {
    const std::string spec = "randomk:density=" + format_param(density);
    auto rank0 = make(spec, 7, 2);
    auto rank1 = make(spec, 7, 2);
    auto other_seed = make(spec, 8, 2);
    for (Compressor* c : {rank0.get(), rank1.get(), other_seed.get()}) {
      ASSERT_TRUE(c->register_tensor({"a", {n}}).is_ok());
      ASSERT_TRUE(c->register_tensor({"b", {100, 1000}}).is_ok());
    }
    auto first = picked(*rank0, 0, 5);
    EXPECT_EQ(static_cast<int64_t>(first.size()), expected_k(n, density)) << spec;
    EXPECT_EQ(picked(*rank1, 0, 5), first) << spec;
    if (density == 1.0) continue;
    EXPECT_NE(picked(*rank0, 0, 6), first) << spec;
    EXPECT_NE(picked(*rank0, 1, 5), first) << spec;
    EXPECT_NE(picked(*other_seed, 0, 5), first) << spec;
  }
}

// Over T steps each index is picked Binomial(T, k/n) times: every count within 5 sigma, and the
// chi-square statistic of all counts within 5 sigma of its mean.
TEST(RandomKTest, IndicesCoverTheTensorUniformlyOverSteps) {
  struct Case {
    int64_t n;
    double density;
    int steps;
  };
  // Sorted-set path (k = 1 < n/512), bitmap path, complement path (k > n/2); 50 or more picks
  // per index on average, so that an index left out (an off-by-one in the sampler) shows.
  for (const Case& c : {Case{1024, 0.001, 51200}, Case{2000, 0.05, 2000}, Case{1000, 0.9, 1000}}) {
    auto r = make("randomk:density=" + format_param(c.density));
    TensorId id = r->register_tensor({"w", {c.n}}).value();
    const std::vector<float> ones(static_cast<size_t>(c.n), 1.0f);
    std::vector<float> counts(ones.size(), 0.0f);
    for (int step = 0; step < c.steps; ++step) round_trip(*r, id, ones, step, counts);
    const double p = static_cast<double>(expected_k(c.n, c.density)) / static_cast<double>(c.n);
    const double mean = c.steps * p;
    const double sd = std::sqrt(c.steps * p * (1 - p));
    double chi2 = 0;
    double total = 0;
    for (float count : counts) {
      chi2 += (count - mean) * (count - mean) / (mean * (1 - p));
      total += count;
    }
    EXPECT_EQ(total, static_cast<double>(expected_k(c.n, c.density)) * c.steps);
    // E[chi2] = n; its variance is about (2 + 1/mean) n for these binomial counts.
    const auto n = static_cast<double>(c.n);
    EXPECT_NEAR(chi2, n, 5 * std::sqrt((2 + 1 / mean) * n))
        << "n=" << c.n << " density=" << c.density;
    if (mean >= 50) {  // the normal approximation holds per index
      for (int64_t i = 0; i < c.n; ++i) ASSERT_NEAR(counts[i], mean, 5 * sd) << "index " << i;
    }
  }
}

// For small n every k-subset is equally likely: C(10, 3) = 120 subsets (bitmap path) and
// C(6, 4) = 15 (complement path), counted over 200 draws per subset, chi-square within 5 sigma.
TEST(RandomKTest, EverySubsetIsEquallyLikely) {
  struct Case {
    int64_t n;
    double density;
    int subsets;
  };
  for (const Case& c : {Case{10, 0.3, 120}, Case{6, 0.7, 15}}) {
    auto r = make("randomk:density=" + format_param(c.density));
    TensorId id = r->register_tensor({"w", {c.n}}).value();
    const int steps = 200 * c.subsets;
    std::map<uint32_t, int> counts;
    for (int step = 0; step < steps; ++step) {
      uint32_t mask = 0;
      for (int64_t i : picked(*r, id, step)) mask |= 1u << i;
      ++counts[mask];
    }
    EXPECT_EQ(static_cast<int>(counts.size()), c.subsets);
    double chi2 = 0;
    for (const auto& [mask, count] : counts) {
      EXPECT_EQ(std::popcount(mask), expected_k(c.n, c.density));
      chi2 += (count - 200.0) * (count - 200.0) / 200.0;
    }
    const double df = c.subsets - 1;
    EXPECT_NEAR(chi2, df, 5 * std::sqrt(2 * df)) << "n=" << c.n;
  }
}

TEST(RandomKTest, DensityOneReproducesTheInputExactly) {
  for (const char* spec :
       {"randomk:density=1", "randomk:density=1,unbiased=true", "fp16(randomk:density=1)"}) {
    auto r = make(spec);
    for (const Shape& shape : {Shape{1}, Shape{7}, Shape{64, 33}}) {
      TensorId id = r->register_tensor({"t" + shape_to_string(shape), shape}).value();
      auto grad = gaussian(shape_numel(shape), 3);
      std::vector<float> accum(grad.size(), 0.0f);
      round_trip(*r, id, grad, 0, accum);
      for (size_t i = 0; i < grad.size(); ++i) {
        const float expected =
            r->payload_dtype() == DType::kF16 ? f16_to_f32(f32_to_f16(grad[i])) : grad[i];
        ASSERT_EQ(accum[i], expected) << spec << " index " << i;
      }
    }
  }
}

// unbiased=true: decoded_i = x_i n/k with probability k/n, else 0; variance x_i^2 (n/k - 1).
// The mean over T steps is within 5 sigma of x_i for every i. unbiased=false: the mean is x_i k/n.
TEST(RandomKTest, UnbiasedOptionIsUnbiased) {
  const int64_t n = 1000;
  const int steps = 4000;
  const double q = 0.1;  // k/n
  auto grad = gaussian(n, 11);
  for (bool unbiased : {true, false}) {
    auto r = make(std::string("randomk:density=0.1,unbiased=") + (unbiased ? "true" : "false"));
    TensorId id = r->register_tensor({"w", {n}}).value();
    std::vector<float> sum(static_cast<size_t>(n), 0.0f);
    for (int step = 0; step < steps; ++step) round_trip(*r, id, grad, step, sum);
    double z_sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double x = grad[i];
      const double expected = unbiased ? x : x * q;
      const double variance = unbiased ? x * x * (1 / q - 1) : x * x * q * (1 - q);
      const double sd = std::sqrt(variance / steps);
      const double mean = sum[i] / static_cast<double>(steps);
      ASSERT_NEAR(mean, expected, 5 * sd + 1e-6 * std::fabs(x)) << "index " << i;
      z_sum += (mean - expected) / sd;
    }
    EXPECT_NEAR(z_sum / std::sqrt(static_cast<double>(n)), 0.0, 5.0);
  }
}

// The allreduce of the payloads, decoded once, equals the average of each rank's own decode:
// every rank picks the same indices. Written here because the contract test covers gather kinds.
TEST(RandomKTest, SumAggregationEqualsAverageOfOwnDecodes) {
  for (const char* spec : {"randomk:density=0.05", "randomk:density=0.3,unbiased=true",
                           "fp16(randomk:density=0.1)", "bf16(randomk:density=0.6)"}) {
    for (int world = 1; world <= 4; ++world) {
      std::vector<std::unique_ptr<Compressor>> owned;
      std::vector<std::unique_ptr<Compressor>> references;
      std::vector<Compressor*> ranks;
      for (int r = 0; r < world; ++r) {
        owned.push_back(make(spec, 7, world));
        references.push_back(make(spec, 7, world));
        ASSERT_TRUE(owned.back()->register_tensor({"w", {48, 40}}).is_ok());
        ASSERT_TRUE(references.back()->register_tensor({"w", {48, 40}}).is_ok());
        ranks.push_back(owned.back().get());
      }
      std::vector<std::vector<float>> grads;
      for (int r = 0; r < world; ++r) grads.push_back(gaussian(48 * 40, 50 + r));
      auto exchanged = testing::serial_exchange(ranks, 0, grads, {3, 0});
      ASSERT_TRUE(exchanged.is_ok()) << exchanged.status().to_string();
      std::vector<float> expected(48 * 40, 0.0f);
      for (int r = 0; r < world; ++r) {
        std::vector<float> alone(expected.size(), 0.0f);
        round_trip(*references[r], 0, grads[r], 3, alone);
        for (size_t i = 0; i < alone.size(); ++i) expected[i] += alone[i] / world;
      }
      const bool half = owned[0]->payload_dtype() != DType::kF32;
      for (int r = 0; r < world; ++r) {
        for (size_t i = 0; i < expected.size(); ++i) {
          // f32: only the order of the additions differs; f16/bf16: the reduced sum is rounded
          // to the payload dtype again.
          const float tolerance = (half ? 1e-2f : 1e-6f) * (1 + std::fabs(expected[i]));
          ASSERT_NEAR(exchanged->averaged[r][i], expected[i], tolerance)
              << spec << " world " << world << " rank " << r << " index " << i;
        }
      }
    }
  }
}

TEST(RandomKTest, SubtractOwnPayloadSubtractsTheDecode) {
  for (const char* spec : {"randomk:density=0.2", "randomk:density=0.2,unbiased=true"}) {
    auto r = make(spec);
    TensorId id = r->register_tensor({"w", {500}}).value();
    auto grad = gaussian(500, 4);
    auto payload = compress(*r, id, grad, 9);
    std::vector<float> decoded(500, 0.0f);
    ASSERT_TRUE(
        r->decompress_accumulate(id, payload, {decoded.data(), DType::kF32, {500}}).is_ok());
    std::vector<float> target = grad;
    ASSERT_TRUE(r->subtract_own_payload(id, payload, {target.data(), DType::kF32, {500}}).is_ok());
    for (size_t i = 0; i < grad.size(); ++i) ASSERT_EQ(target[i], grad[i] - decoded[i]) << i;
  }
}

TEST(RandomKTest, CorruptPayloadsAndMisuseAreRejected) {
  auto r = make("randomk:density=0.1");
  TensorId id = r->register_tensor({"w", {1000}}).value();
  std::vector<float> accum(1000, 0.0f);
  const MutableView view{accum.data(), DType::kF32, {1000}};
  std::vector<std::byte> early(r->max_compressed_bytes(id));
  EXPECT_EQ(r->decompress_accumulate(id, early, view).code(), StatusCode::kFailedPrecondition)
      << "decoded before this rank compressed";
  auto payload = compress(*r, id, gaussian(1000, 1), 0);
  ASSERT_EQ(payload.size(), 400u);
  for (size_t size : {size_t{0}, size_t{399}, size_t{401}, size_t{800}}) {
    std::vector<std::byte> wrong(size);
    EXPECT_EQ(r->decompress_accumulate(id, wrong, view).code(), StatusCode::kDataLoss) << size;
  }
  // More than 2^32 - 1 elements cannot be indexed by the u32 indices.
  EXPECT_FALSE(r->register_tensor({"huge", {int64_t{1} << 32}}).is_ok());
}

// The policy: a NaN or Inf among the values sent is an error; one left out is not sent.
TEST(RandomKTest, NonFiniteValuesSentAreAnError) {
  auto all = make("randomk:density=1");
  TensorId id = all->register_tensor({"w", {100}}).value();
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    for (size_t at : {size_t{0}, size_t{57}, size_t{99}}) {
      auto grad = gaussian(100, 2);
      grad[at] = bad;
      std::vector<std::byte> out(all->max_compressed_bytes(id));
      auto used = all->compress(id, {grad.data(), DType::kF32, {100}}, out, {0, 0});
      ASSERT_FALSE(used.is_ok());
      EXPECT_EQ(used.status().code(), StatusCode::kInvalidArgument);
      EXPECT_NE(used.status().message().find("'w'"), std::string::npos);
    }
  }
  auto some = make("randomk:density=0.01");
  id = some->register_tensor({"w", {1000}}).value();
  auto indices = picked(*some, id, 4);
  ASSERT_EQ(indices.size(), 10u);
  auto grad = gaussian(1000, 2);
  int64_t unpicked = 0;
  while (std::find(indices.begin(), indices.end(), unpicked) != indices.end()) ++unpicked;
  grad[unpicked] = std::numeric_limits<float>::quiet_NaN();
  std::vector<std::byte> out(some->max_compressed_bytes(id));
  EXPECT_TRUE(some->compress(id, {grad.data(), DType::kF32, {1000}}, out, {4, 0}).is_ok());
  grad[indices[3]] = std::numeric_limits<float>::infinity();  // picked
  EXPECT_FALSE(some->compress(id, {grad.data(), DType::kF32, {1000}}, out, {4, 0}).is_ok());
}

}  // namespace
}  // namespace frugal
