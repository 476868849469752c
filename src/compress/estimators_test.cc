// dgc, gaussiank, redsync and sidco through the registry: every selection is a magnitude
// threshold set, its count lands in the method's documented window on Gaussian and heavy-tailed
// inputs, DGC's warm-up schedule, RedSync's threshold reuse and state, and the non-finite policy.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include <gtest/gtest.h>

#include "compress/registry.h"
#include "compress/sparse_payload.h"
#include "compress/testing/compressors.h"

namespace frugal {
namespace {

enum class Distribution { kGaussian, kLaplace, kStudentT3 };

std::vector<float> sample(Distribution d, int64_t n, uint32_t seed) {
  std::mt19937 engine(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::exponential_distribution<float> exponential(1.0f);
  std::student_t_distribution<float> student(3.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (size_t i = 0; i < v.size(); ++i) {
    switch (d) {
      case Distribution::kGaussian:
        v[i] = normal(engine);
        break;
      case Distribution::kLaplace:
        v[i] = (i % 2 == 0 ? 1.0f : -1.0f) * exponential(engine);
        break;
      case Distribution::kStudentT3:
        v[i] = student(engine);
        break;
    }
    v[i] *= 1e-3f;  // gradient-like scale
  }
  return v;
}

std::unique_ptr<Compressor> make(const std::string& spec, uint64_t seed = 3) {
  return testing::make_or_fail(spec, seed);
}

struct Selection {
  std::vector<std::byte> payload;
  std::vector<uint32_t> indices;
};

Selection compress(Compressor& c, TensorId id, const std::vector<float>& x, int64_t step = 0) {
  Selection s;
  s.payload.resize(c.max_compressed_bytes(id));
  auto used = c.compress(id, {x.data(), DType::kF32, c.tensor(id).shape}, s.payload, {step, 0});
  EXPECT_TRUE(used.is_ok()) << used.status().to_string();
  if (!used.is_ok()) return s;
  s.payload.resize(*used);
  auto view = parse_sparse(s.payload, *c.sparse_value_dtype(), static_cast<int64_t>(x.size()));
  EXPECT_TRUE(view.is_ok());
  for (int64_t i = 0; i < view->count; ++i) {
    s.indices.push_back(view->index(i));
    EXPECT_EQ(view->value(i), x[view->index(i)]);
  }
  return s;
}

// Every method sends a threshold set: nothing left out is larger than anything sent.
void expect_threshold_set(const std::vector<float>& x, const std::vector<uint32_t>& indices,
                          const std::string& what) {
  std::vector<bool> sent(x.size(), false);
  float min_sent = std::numeric_limits<float>::infinity();
  for (uint32_t i : indices) {
    sent[i] = true;
    min_sent = std::min(min_sent, std::fabs(x[i]));
  }
  float max_unsent = 0.0f;
  for (size_t i = 0; i < x.size(); ++i) {
    if (!sent[i]) max_unsent = std::max(max_unsent, std::fabs(x[i]));
  }
  EXPECT_LE(max_unsent, min_sent) << what;
  EXPECT_TRUE(std::is_sorted(indices.begin(), indices.end())) << what;
}

struct Window {
  std::string spec;
  double low;   // count >= low * k
  double high;  // count <= high * k
};

TEST(EstimatorTest, CountsLandInTheDocumentedWindow) {
  const int64_t n = 200003;
  for (double density : {0.01, 0.001}) {
    const auto k = static_cast<double>(std::floor(density * n));
    const std::string d = format_param(density);
    const std::vector<Window> windows = {{"dgc:density=" + d, 0.8, 1.3},
                                         {"gaussiank:density=" + d, 2.0 / 3.0, 4.0 / 3.0},
                                         {"redsync:density=" + d, 1.0, 1.5},
                                         {"sidco:density=" + d, 0.5, 2.0}};
    for (const Window& w : windows) {
      for (Distribution dist :
           {Distribution::kGaussian, Distribution::kLaplace, Distribution::kStudentT3}) {
        auto c = make(w.spec);
        TensorId id = c->register_tensor({"w", {n}}).value();
        for (int64_t step = 0; step < 2; ++step) {
          const auto x = sample(dist, n, static_cast<uint32_t>(11 + step));
          const Selection s = compress(*c, id, x, step);
          const std::string what = w.spec + " distribution " +
                                   std::to_string(static_cast<int>(dist)) + " step " +
                                   std::to_string(step) + " count " +
                                   std::to_string(s.indices.size()) + " k " + std::to_string(k);
          EXPECT_GE(static_cast<double>(s.indices.size()), std::floor(w.low * k)) << what;
          EXPECT_LE(static_cast<double>(s.indices.size()), w.high * k) << what;
          EXPECT_LE(s.payload.size(), c->max_compressed_bytes(id)) << what;
          expect_threshold_set(x, s.indices, what);
        }
      }
    }
  }
}

TEST(EstimatorTest, DgcWarmupDecaysFromAQuarterToTheDensity) {
  auto c = make("dgc:density=0.01,warmup_steps=4");
  TensorId id = c->register_tensor({"w", {100000}}).value();
  const auto x = sample(Distribution::kGaussian, 100000, 2);
  for (int64_t step = 0; step <= 5; ++step) {
    // 0.25, 0.112, 0.05, 0.0224, then 0.01 from step 4 on.
    const double density = step >= 4 ? 0.01 : 0.25 * std::pow(0.04, step / 4.0);
    const double k = std::floor(density * 100000);
    const auto count = static_cast<double>(compress(*c, id, x, step).indices.size());
    EXPECT_GE(count, 0.8 * k) << "step " << step;
    EXPECT_LE(count, 1.3 * k) << "step " << step;
  }
  EXPECT_EQ(c->max_compressed_bytes(id), sparse_payload_bytes(32500, DType::kF32));
}

TEST(EstimatorTest, DgcIsDeterministicPerSeedAndStep) {
  const auto x = sample(Distribution::kStudentT3, 50000, 5);
  auto a = make("dgc:density=0.01", 1);
  auto b = make("dgc:density=0.01", 1);
  for (Compressor* c : {a.get(), b.get()}) ASSERT_TRUE(c->register_tensor({"w", {50000}}).is_ok());
  EXPECT_EQ(compress(*a, 0, x, 3).payload, compress(*b, 0, x, 3).payload);
}

TEST(EstimatorTest, RedsyncReusesAndRestoresItsThreshold) {
  auto a = make("redsync:density=0.01");
  auto b = make("redsync:density=0.01");
  for (Compressor* c : {a.get(), b.get()}) ASSERT_TRUE(c->register_tensor({"w", {30000}}).is_ok());
  const auto x = sample(Distribution::kGaussian, 30000, 1);
  const Selection first = compress(*a, 0, x);
  StateDict state = a->export_state();
  ASSERT_TRUE(state.contains("w:redsync.threshold"));
  float threshold;
  std::memcpy(&threshold, state["w:redsync.threshold"].data.data(), 4);
  EXPECT_TRUE(std::isfinite(threshold));
  // Slightly scaled gradients keep the count in the window: the same threshold is reused.
  auto y = x;
  for (float& v : y) v *= 1.01f;
  const Selection second = compress(*a, 0, y);
  EXPECT_EQ(a->export_state()["w:redsync.threshold"].data, state["w:redsync.threshold"].data);
  for (uint32_t i : second.indices) EXPECT_GE(std::fabs(y[i]), threshold);
  ASSERT_TRUE(b->import_state(state).is_ok());
  EXPECT_EQ(compress(*b, 0, y).payload, second.payload);
  (void)first;
}

TEST(EstimatorTest, ASingleNonFiniteValueIsAnError) {
  for (const char* spec : {"dgc:density=0.01", "gaussiank:density=0.01", "redsync:density=0.01",
                           "sidco:density=0.01", "bf16(dgc:density=0.01)"}) {
    auto c = make(spec);
    TensorId id = c->register_tensor({"layer.b", {40000}}).value();
    for (size_t position : {size_t{0}, size_t{12345}, size_t{39999}}) {
      for (float bad :
           {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
        auto x = sample(Distribution::kGaussian, 40000, 9);
        x[position] = bad;
        std::vector<std::byte> out(c->max_compressed_bytes(id));
        auto used = c->compress(id, {x.data(), DType::kF32, {40000}}, out, {0, 0});
        ASSERT_FALSE(used.is_ok()) << spec << " position " << position;
        EXPECT_EQ(used.status().code(), StatusCode::kInvalidArgument);
        EXPECT_NE(used.status().message().find("'layer.b'"), std::string::npos);
      }
    }
  }
}

TEST(EstimatorTest, ParametersAreValidatedAndSpecsCanonical) {
  for (const char* bad : {"dgc:density=0", "gaussiank:density=1.5", "redsync:density=-1",
                          "sidco:density=0.01,stages=0", "sidco:density=0.01,stages=9",
                          "dgc:density=0.01,sample=0", "dgc:density=0.01,warmup_steps=-1"}) {
    EXPECT_FALSE(make_compressor(bad, {}).is_ok()) << bad;
  }
  EXPECT_EQ(make("dgc")->spec(), "dgc:density=0.01,sample=0.01,warmup_steps=0");
  EXPECT_EQ(make("sidco")->spec(), "sidco:density=0.01,stages=3");
  EXPECT_EQ(make("fp16(gaussiank:density=0.001)")->spec(), "fp16(gaussiank:density=0.001)");
}

TEST(EstimatorTest, DensityOneSendsEverything) {
  for (const char* spec :
       {"dgc:density=1", "gaussiank:density=1", "redsync:density=1", "sidco:density=1"}) {
    auto c = make(spec);
    TensorId id = c->register_tensor({"w", {999}}).value();
    const auto x = sample(Distribution::kLaplace, 999, 4);
    const Selection s = compress(*c, id, x);
    EXPECT_EQ(s.indices.size(), 999u) << spec;
  }
}

}  // namespace
}  // namespace frugal
