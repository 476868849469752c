// Error feedback and DGC momentum correction against independent references: EF's identity
// sent + new residual == input + old residual (exact for fp16 and sparse f32 inners), a
// brute-force DGC over several steps, state round trips, the non-finite reset and rejections.
// Inner compressors are the registered fp16 and the test-only brute-force top-k (no dependency
// on the other families).
#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "compress/memories_test_util.h"
#include "compress/testing/compressors.h"

namespace frugal {
namespace {

using memory_testing::compress_once;
using memory_testing::decode;
using memory_testing::expect_rejected;
using memory_testing::f32_entry;
using memory_testing::gaussian;
using memory_testing::make_test_compressor;

std::unique_ptr<Compressor> make(std::string_view spec) {
  return testing::expect_made(make_test_compressor(spec), spec);
}

// Indices of the k largest |values| (ties to the lower index), ascending: a sorted copy.
std::vector<size_t> largest(const std::vector<float>& values, size_t k) {
  std::vector<std::pair<float, size_t>> sorted;
  for (size_t i = 0; i < values.size(); ++i) sorted.emplace_back(-std::fabs(values[i]), i);
  std::sort(sorted.begin(), sorted.end());
  std::vector<size_t> picked;
  for (size_t i = 0; i < k && i < sorted.size(); ++i) picked.push_back(sorted[i].second);
  std::sort(picked.begin(), picked.end());
  return picked;
}

TEST(ErrorFeedbackTest, Fp16IdentityOverStepsIsExact) {
  auto c = make("ef(fp16)");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->spec(), "ef(fp16)");
  EXPECT_EQ(c->aggregation(), Aggregation::kSum);
  const Shape shape = {40, 25};
  ASSERT_TRUE(c->register_tensor({"w", shape}).is_ok());
  std::vector<float> residual(1000, 0.0f);  // the reference's own residual
  for (int64_t step = 0; step < 5; ++step) {
    // Values past fp16's precision, so the residual is never trivially zero.
    auto grad = gaussian(1000, static_cast<uint32_t>(step + 1), 3.0f);
    auto payload = compress_once(*c, 0, grad, step);
    ASSERT_TRUE(payload.is_ok()) << payload.status().to_string();
    const std::vector<float> sent = decode(*c, 0, *payload);
    const std::vector<float> new_residual = f32_entry(c->export_state(), "w:ef.residual");
    ASSERT_EQ(new_residual.size(), 1000u);
    for (size_t i = 0; i < 1000; ++i) {
      const float compensated = grad[i] + residual[i];
      const float expected_sent = f16_to_f32(f32_to_f16(compensated));
      ASSERT_EQ(sent[i], expected_sent) << "step " << step << " index " << i;
      ASSERT_EQ(new_residual[i], compensated - expected_sent);
      // The identity itself, bit for bit.
      ASSERT_EQ(sent[i] + new_residual[i], grad[i] + residual[i]);
      residual[i] = compensated - expected_sent;
    }
  }
  EXPECT_EQ(c->stats().residual_bytes, 4000);
  EXPECT_EQ(c->stats().residual_bytes_saved, 0);
}

TEST(ErrorFeedbackTest, SparseIdentityOverStepsIsExact) {
  auto c = make("ef(brutek:count=30)");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->spec(), "ef(brutek:count=30)");
  EXPECT_EQ(c->sparse_value_dtype(), DType::kF32);
  ASSERT_TRUE(c->register_tensor({"a", {500}}).is_ok());
  ASSERT_TRUE(c->register_tensor({"b", {7}}).is_ok());  // fewer elements than k
  std::vector<std::vector<float>> residual = {std::vector<float>(500, 0.0f),
                                              std::vector<float>(7, 0.0f)};
  for (int64_t step = 0; step < 6; ++step) {
    for (TensorId id : {0, 1}) {
      const auto n = static_cast<size_t>(c->tensor(id).shape[0]);
      auto grad = gaussian(static_cast<int64_t>(n), static_cast<uint32_t>(10 * step + id));
      std::vector<float> compensated(n);
      for (size_t i = 0; i < n; ++i) compensated[i] = grad[i] + residual[id][i];
      std::vector<float> expected_sent(n, 0.0f);
      for (size_t i : largest(compensated, 30)) expected_sent[i] = compensated[i];

      auto payload = compress_once(*c, id, grad, step);
      ASSERT_TRUE(payload.is_ok()) << payload.status().to_string();
      const std::vector<float> sent = decode(*c, id, *payload);
      const std::vector<float> new_residual =
          f32_entry(c->export_state(), c->tensor(id).name + ":ef.residual");
      ASSERT_EQ(sent, expected_sent) << "step " << step;
      for (size_t i = 0; i < n; ++i) {
        ASSERT_EQ(sent[i] + new_residual[i], grad[i] + residual[id][i]);
        ASSERT_EQ(new_residual[i], expected_sent[i] != 0 ? 0.0f : compensated[i]);
      }
      residual[id] = new_residual;
    }
  }
}

TEST(ErrorFeedbackTest, NonFiniteGradientClearsTheResidual) {
  auto c = make("ef(brutek:count=2)");
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->register_tensor({"w", {10}}).is_ok());
  ASSERT_TRUE(compress_once(*c, 0, gaussian(10, 1), 0).is_ok());
  std::vector<float> bad = gaussian(10, 2);
  bad[3] = std::numeric_limits<float>::quiet_NaN();  // never among the top 2 by magnitude
  auto failed = compress_once(*c, 0, bad, 1);
  ASSERT_FALSE(failed.is_ok());
  EXPECT_EQ(failed.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(failed.status().message().find("'w'"), std::string::npos);
  EXPECT_EQ(f32_entry(c->export_state(), "w:ef.residual"), std::vector<float>(10, 0.0f));
  EXPECT_TRUE(compress_once(*c, 0, gaussian(10, 3), 2).is_ok());
}

TEST(ErrorFeedbackTest, StateRoundTripAndRejections) {
  auto a = make("ef(brutek:count=5)");
  auto b = make("ef(brutek:count=5)");
  ASSERT_NE(b, nullptr);
  for (Compressor* c : {a.get(), b.get()}) {
    ASSERT_TRUE(c->register_tensor({"w", {8, 8}}).is_ok());
  }
  for (int64_t step = 0; step < 3; ++step) {
    ASSERT_TRUE(compress_once(*a, 0, gaussian(64, static_cast<uint32_t>(step)), step).is_ok());
  }
  const StateDict saved = a->export_state();
  ASSERT_TRUE(b->import_state(saved).is_ok());
  EXPECT_EQ(f32_entry(b->export_state(), "w:ef.residual"), f32_entry(saved, "w:ef.residual"));
  auto grad = gaussian(64, 77);
  EXPECT_EQ(compress_once(*a, 0, grad, 3).value(), compress_once(*b, 0, grad, 3).value());

  StateDict wrong = saved;
  wrong["w:ef.residual"].shape = {64};
  Status s = b->import_state(wrong);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.to_string();
  EXPECT_EQ(f32_entry(b->export_state(), "w:ef.residual"),
            f32_entry(a->export_state(), "w:ef.residual"))
      << "a failed import changed the state";
  ASSERT_TRUE(b->import_state({}).is_ok());  // no saved state: reset
  EXPECT_EQ(f32_entry(b->export_state(), "w:ef.residual"), std::vector<float>(64, 0.0f));
}

TEST(ErrorFeedbackTest, RejectsNestedMemoriesTwoPhaseAndMultiRoundInners) {
  expect_rejected("ef(ef(fp16))", "memories do not nest");
  expect_rejected("ef(fp16(ef(brutek:count=1)))", "memories do not nest");
  expect_rejected("ef(momentum(brutek:count=1))", "memories do not nest");
  expect_rejected("ef(resireduce(ef(fp16)))", "memories do not nest");
  expect_rejected("ef(stub:kind=two-phase)", "two-phase");
  expect_rejected("ef(stub:rounds=2)", "2 allreduce rounds");
  // Through the registry too: ef needs an inner compressor and takes no parameters.
  EXPECT_FALSE(make_compressor("ef", {}).is_ok());
  EXPECT_FALSE(make_compressor("ef(fp16):momentum=0.9", {}).is_ok());
  auto nested = make_compressor("ef(ef(fp16))", {});
  ASSERT_FALSE(nested.is_ok());
  EXPECT_NE(nested.status().message().find("memories do not nest"), std::string::npos);
}

TEST(ErrorFeedbackTest, Fp16WrapperSendsInnerValuesAsF16) {
  auto outer = make("fp16(ef(brutek:count=3))");
  ASSERT_NE(outer, nullptr);
  EXPECT_EQ(outer->spec(), "ef(fp16(brutek:count=3))");
  EXPECT_EQ(outer->sparse_value_dtype(), DType::kF16);
  ASSERT_TRUE(outer->register_tensor({"w", {20}}).is_ok());
  auto grad = gaussian(20, 5, 3.0f);
  auto payload = compress_once(*outer, 0, grad, 0);
  ASSERT_TRUE(payload.is_ok());
  const std::vector<float> sent = decode(*outer, 0, *payload);
  const std::vector<float> residual = f32_entry(outer->export_state(), "w:ef.residual");
  for (size_t i = 0; i < 20; ++i) EXPECT_EQ(sent[i] + residual[i], grad[i]) << i;
}

// ---- Momentum correction --------------------------------------------------------------------

// DGC's equations, written out: u = m u + g; v = v + u; send the k largest |v|; zero u and v
// there.
struct DgcReference {
  float m;
  size_t k;
  std::vector<float> u, v;

  std::vector<float> step(const std::vector<float>& g) {
    for (size_t i = 0; i < g.size(); ++i) {
      u[i] = m * u[i] + g[i];
      v[i] = v[i] + u[i];
    }
    std::vector<float> sent(g.size(), 0.0f);
    for (size_t i : largest(v, k)) {
      sent[i] = v[i];
      u[i] = 0;
      v[i] = 0;
    }
    return sent;
  }
};

TEST(MomentumCorrectionTest, MatchesBruteForceDgcOverSteps) {
  for (double m : {0.9, 0.5, 0.0}) {
    const std::string spec = "momentum(brutek:count=12):momentum=" + format_param(m);
    auto c = make(spec);
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(c->spec(), spec);
    ASSERT_TRUE(c->register_tensor({"w", {15, 20}}).is_ok());
    DgcReference reference{static_cast<float>(m), 12, std::vector<float>(300, 0.0f),
                           std::vector<float>(300, 0.0f)};
    for (int64_t step = 0; step < 8; ++step) {
      auto grad = gaussian(300, static_cast<uint32_t>(100 + step));
      auto payload = compress_once(*c, 0, grad, step);
      ASSERT_TRUE(payload.is_ok()) << payload.status().to_string();
      ASSERT_EQ(decode(*c, 0, *payload), reference.step(grad)) << "m " << m << " step " << step;
      const StateDict state = c->export_state();
      ASSERT_EQ(f32_entry(state, "w:momentum.u"), reference.u);
      ASSERT_EQ(f32_entry(state, "w:momentum.v"), reference.v);
    }
    EXPECT_EQ(c->stats().residual_bytes, 300 * 8);
  }
}

TEST(MomentumCorrectionTest, StateRoundTripAndNonFiniteReset) {
  auto a = make("momentum(brutek:count=4)");
  auto b = make("momentum(brutek:count=4)");
  ASSERT_NE(b, nullptr);
  for (Compressor* c : {a.get(), b.get()}) ASSERT_TRUE(c->register_tensor({"w", {50}}).is_ok());
  for (int64_t step = 0; step < 3; ++step) {
    ASSERT_TRUE(compress_once(*a, 0, gaussian(50, static_cast<uint32_t>(step)), step).is_ok());
  }
  ASSERT_TRUE(b->import_state(a->export_state()).is_ok());
  auto grad = gaussian(50, 9);
  EXPECT_EQ(compress_once(*a, 0, grad, 3).value(), compress_once(*b, 0, grad, 3).value());
  EXPECT_EQ(f32_entry(a->export_state(), "w:momentum.u"),
            f32_entry(b->export_state(), "w:momentum.u"));

  StateDict half = a->export_state();
  half.erase("w:momentum.v");
  EXPECT_EQ(b->import_state(half).code(), StatusCode::kDataLoss);

  grad[7] = std::numeric_limits<float>::infinity();
  auto failed = compress_once(*a, 0, grad, 4);
  ASSERT_FALSE(failed.is_ok());
  EXPECT_EQ(failed.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(f32_entry(a->export_state(), "w:momentum.v"), std::vector<float>(50, 0.0f));
}

TEST(MomentumCorrectionTest, Rejections) {
  expect_rejected("momentum(fp16)", "not sparse");
  expect_rejected("momentum(brutek:count=1):momentum=1", "0 <= momentum < 1");
  expect_rejected("momentum(brutek:count=1):momentum=-0.1", "momentum");
  expect_rejected("momentum(ef(brutek:count=1))", "memories do not nest");
  expect_rejected("momentum(momentum(brutek:count=1))", "memories do not nest");
  auto dense = make_compressor("momentum(fp16)", {});
  ASSERT_FALSE(dense.is_ok());
  EXPECT_NE(dense.status().message().find("momentum(topk:density=0.01)"), std::string::npos)
      << dense.status().message();
}

}  // namespace
}  // namespace frugal
