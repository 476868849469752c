// topk and threshold compressors through the registry: exact selection against a sorted copy,
// density 1 reproduces the input, f16 values, the sparse error-feedback subtraction, the k rule,
// the non-finite policy and parameter ranges.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include <gtest/gtest.h>

#include "compress/registry.h"
#include "compress/testing/compressors.h"
#include "compress/testing/test_data.h"

namespace frugal {
namespace {

using testing::gaussian;

std::unique_ptr<Compressor> make(const std::string& spec) { return testing::make_or_fail(spec); }

Result<std::vector<std::byte>> compress(Compressor& c, TensorId id, const std::vector<float>& x) {
  std::vector<std::byte> out(c.max_compressed_bytes(id));
  FRUGAL_ASSIGN_OR_RETURN(size_t used,
                          c.compress(id, {x.data(), DType::kF32, c.tensor(id).shape}, out, {0, 0}));
  out.resize(used);
  return out;
}

std::vector<float> decompress(Compressor& c, TensorId id, const std::vector<std::byte>& payload) {
  std::vector<float> dense(static_cast<size_t>(shape_numel(c.tensor(id).shape)), 0.0f);
  Status s = c.decompress_accumulate(id, payload, {dense.data(), DType::kF32, c.tensor(id).shape});
  EXPECT_TRUE(s.is_ok()) << s.to_string();
  return dense;
}

TEST(TopkCompressorTest, SendsTheKLargestMagnitudesExactly) {
  for (int64_t n : {1, 7, 1000, 100003}) {
    for (double density : {0.001, 0.01, 0.25}) {
      const std::string spec = "topk:density=" + format_param(density);
      auto c = make(spec);
      TensorId id = c->register_tensor({"w", {n}}).value();
      auto x = gaussian(n, static_cast<uint32_t>(n));
      for (int64_t i = 0; i < n; i += 3) x[i] = std::round(x[i]);  // ties
      auto payload = compress(*c, id, x);
      ASSERT_TRUE(payload.is_ok()) << payload.status().to_string();
      EXPECT_EQ(payload->size(), c->max_compressed_bytes(id));
      const auto k = std::max<int64_t>(1, static_cast<int64_t>(std::floor(density * n)));
      std::vector<size_t> order(static_cast<size_t>(n));
      std::iota(order.begin(), order.end(), size_t{0});
      std::stable_sort(order.begin(), order.end(),
                       [&](size_t a, size_t b) { return std::fabs(x[a]) > std::fabs(x[b]); });
      std::vector<float> expected(static_cast<size_t>(n), 0.0f);
      for (int64_t r = 0; r < k; ++r) expected[order[r]] = x[order[r]];
      EXPECT_EQ(decompress(*c, id, *payload), expected) << spec << " n=" << n;
    }
  }
}

TEST(TopkCompressorTest, KIsFloorOfDensityTimesNumelAtLeastOne) {
  auto c = make("topk:density=0.07");
  TensorId a = c->register_tensor({"a", {100}}).value();
  TensorId b = c->register_tensor({"b", {10}}).value();
  // 4-byte count + k * (4-byte index + 4-byte value)
  EXPECT_EQ(c->max_compressed_bytes(a), 4u + 7u * 8u);
  EXPECT_EQ(c->max_compressed_bytes(b), 4u + 1u * 8u);
  EXPECT_TRUE(c->fixed_size());
  EXPECT_EQ(c->aggregation(), Aggregation::kGather);
  EXPECT_EQ(c->sparse_value_dtype(), DType::kF32);
}

TEST(TopkCompressorTest, DensityOneReproducesTheInputExactly) {
  auto c = make("topk:density=1");
  TensorId id = c->register_tensor({"w", {33, 31}}).value();
  auto x = gaussian(33 * 31, 2);
  x[5] = 0.0f;
  x[6] = -0.0f;
  x[7] = std::numeric_limits<float>::denorm_min();
  auto payload = compress(*c, id, x);
  ASSERT_TRUE(payload.is_ok());
  auto y = decompress(*c, id, *payload);
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(y[i], x[i] + 0.0f) << i;
}

TEST(TopkCompressorTest, Fp16SendsRoundedValuesAndSpecRebuilds) {
  auto c = make("fp16(topk:density=0.5)");
  EXPECT_EQ(c->spec(), "fp16(topk:density=0.5)");
  EXPECT_EQ(c->sparse_value_dtype(), DType::kF16);
  TensorId id = c->register_tensor({"w", {4}}).value();
  std::vector<float> x = {0.1f, -3.0f, 0.2f, 1.0f / 3.0f};
  auto payload = compress(*c, id, x);
  ASSERT_TRUE(payload.is_ok());
  EXPECT_EQ(payload->size(), 4u + 2u * 6u);
  auto y = decompress(*c, id, *payload);
  EXPECT_EQ(y, (std::vector<float>{0, -3.0f, 0, f16_to_f32(f32_to_f16(1.0f / 3.0f))}));
}

TEST(TopkCompressorTest, SubtractOwnPayloadZeroesTheSentEntries) {
  auto c = make("topk:density=0.1");
  TensorId id = c->register_tensor({"w", {1000}}).value();
  auto x = gaussian(1000, 8);
  auto payload = compress(*c, id, x);
  ASSERT_TRUE(payload.is_ok());
  auto sent = decompress(*c, id, *payload);
  auto residual = x;
  ASSERT_TRUE(
      c->subtract_own_payload(id, *payload, {residual.data(), DType::kF32, {1000}}).is_ok());
  int zeroed = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(residual[i] + sent[i], x[i]);
    zeroed += sent[i] != 0.0f && residual[i] == 0.0f ? 1 : 0;
  }
  EXPECT_EQ(zeroed, 100);
}

TEST(TopkCompressorTest, ASingleNonFiniteValueIsAnError) {
  for (const char* spec : {"topk:density=0.01", "topk:density=1", "threshold:value=0.5"}) {
    auto c = make(spec);
    TensorId id = c->register_tensor({"layer.w", {50003}}).value();
    for (size_t position : {size_t{0}, size_t{25000}, size_t{50002}}) {
      auto x = gaussian(50003, 4);
      x[position] = std::numeric_limits<float>::quiet_NaN();
      auto payload = compress(*c, id, x);
      ASSERT_FALSE(payload.is_ok()) << spec << " position " << position;
      EXPECT_EQ(payload.status().code(), StatusCode::kInvalidArgument);
      EXPECT_NE(payload.status().message().find("'layer.w'"), std::string::npos);
    }
  }
}

TEST(TopkCompressorTest, OutOfRangeParametersAreRejected) {
  for (const char* spec : {"topk:density=0", "topk:density=-0.5", "topk:density=1.01", "topk",
                           "threshold:value=-1", "topk:value=1"}) {
    auto made = make_compressor(spec, {});
    if (std::string(spec) == "topk") {
      ASSERT_TRUE(made.is_ok());
      EXPECT_EQ(made.value()->spec(), "topk:density=0.01");
      continue;
    }
    EXPECT_FALSE(made.is_ok()) << spec;
  }
}

TEST(ThresholdCompressorTest, SelectsExactlyTheMagnitudesAtOrAboveTheValue) {
  auto c = make("threshold:value=0.5");
  EXPECT_FALSE(c->fixed_size());
  TensorId id = c->register_tensor({"w", {20001}}).value();
  auto x = gaussian(20001, 6);
  x[10] = 0.5f;
  x[11] = -0.5f;
  x[12] = std::nextafter(0.5f, 0.0f);
  auto payload = compress(*c, id, x);
  ASSERT_TRUE(payload.is_ok());
  auto y = decompress(*c, id, *payload);
  size_t count = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const bool selected = std::fabs(x[i]) >= 0.5f;
    count += selected ? 1 : 0;
    ASSERT_EQ(y[i], selected ? x[i] : 0.0f) << i;
  }
  EXPECT_EQ(payload->size(), 4 + 8 * count);
  EXPECT_EQ(y[12], 0.0f);
  EXPECT_EQ(y[11], -0.5f);
}

}  // namespace
}  // namespace frugal
