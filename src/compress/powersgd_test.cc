// Tests of PowerSGD against independent references: exact reconstruction when the rank covers
// the matrix, the error-feedback identity, orthonormal P, a naive double-precision triple-loop
// implementation of the algorithm over several ranks and steps, exact dense tensors, and state
// round trips.
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include <gtest/gtest.h>

#include "compress/registry.h"
#include "compress/rng.h"
#include "compress/testing/compressors.h"
#include "compress/testing/serial_exchange.h"
#include "compress/testing/test_data.h"

namespace frugal {
namespace {

constexpr uint64_t kSeed = 11;

using testing::gaussian;

std::vector<std::unique_ptr<Compressor>> make_ranks(const std::string& spec, int world,
                                                    const std::vector<TensorInfo>& tensors) {
  std::vector<std::unique_ptr<Compressor>> ranks;
  CompressorContext context;
  context.world_size = world;
  context.seed = kSeed;
  for (int r = 0; r < world; ++r) {
    auto made = make_compressor(spec, context);
    EXPECT_TRUE(made.is_ok()) << made.status().to_string();
    if (!made.is_ok()) return {};
    ranks.push_back(std::move(made).value());
    for (const TensorInfo& t : tensors) EXPECT_TRUE(ranks.back()->register_tensor(t).is_ok());
  }
  return ranks;
}

std::vector<Compressor*> pointers(const std::vector<std::unique_ptr<Compressor>>& owned) {
  std::vector<Compressor*> p;
  for (const auto& c : owned) p.push_back(c.get());
  return p;
}

std::vector<float> exported(const Compressor& c, const std::string& key) {
  return testing::exported_floats(c, key);
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

// Naive row-major matrices in double.
using Matrix = std::vector<double>;

// Gram-Schmidt as documented (each column divided by norm + 1e-8, then removed from the rest).
void reference_orthogonalize(Matrix& a, int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < cols; ++i) {
    double norm = 0;
    for (int64_t k = 0; k < rows; ++k) norm += a[k * cols + i] * a[k * cols + i];
    norm = std::sqrt(norm) + 1e-8;
    for (int64_t k = 0; k < rows; ++k) a[k * cols + i] /= norm;
    for (int64_t j = i + 1; j < cols; ++j) {
      double dot = 0;
      for (int64_t k = 0; k < rows; ++k) dot += a[k * cols + i] * a[k * cols + j];
      for (int64_t k = 0; k < rows; ++k) a[k * cols + j] -= dot * a[k * cols + i];
    }
  }
}

// PowerSGD on W ranks, serially, with triple loops in double.
struct ReferencePowerSgd {
  int64_t n, m, r;
  bool warm_start, error_feedback;
  std::string name;
  std::vector<Matrix> errors;  // per rank
  Matrix q;                    // m x r, empty until drawn

  // Returns the averaged gradient every rank ends with.
  Matrix step(const std::vector<std::vector<float>>& grads, int64_t step_index) {
    const int world = static_cast<int>(grads.size());
    errors.resize(static_cast<size_t>(world), Matrix(static_cast<size_t>(n * m), 0.0));
    std::vector<Matrix> ms(world, Matrix(static_cast<size_t>(n * m)));
    for (int w = 0; w < world; ++w) {
      for (int64_t i = 0; i < n * m; ++i) {
        ms[w][i] = grads[w][i] + (error_feedback ? errors[w][i] : 0.0);
      }
    }
    if (!warm_start || q.empty()) {
      Rng rng(kSeed, step_index, name, RngPurpose::kInitialization);
      q.assign(static_cast<size_t>(m * r), 0.0);
      for (double& v : q) v = rng.uniform() - 0.5f;
    }
    reference_orthogonalize(q, m, r);
    Matrix p(static_cast<size_t>(n * r), 0.0);
    for (int w = 0; w < world; ++w) {
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < r; ++j) {
          for (int64_t k = 0; k < m; ++k) p[i * r + j] += ms[w][i * m + k] * q[k * r + j];
        }
      }
    }
    reference_orthogonalize(p, n, r);
    Matrix q_sum(static_cast<size_t>(m * r), 0.0);
    for (int w = 0; w < world; ++w) {
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < r; ++j) {
          for (int64_t k = 0; k < n; ++k) q_sum[i * r + j] += ms[w][k * m + i] * p[k * r + j];
        }
      }
    }
    Matrix average(static_cast<size_t>(n * m), 0.0);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < m; ++j) {
        for (int64_t k = 0; k < r; ++k) average[i * m + j] += p[i * r + k] * q_sum[j * r + k];
        average[i * m + j] /= world;
      }
    }
    for (int w = 0; w < world; ++w) {
      for (int64_t i = 0; i < n * m; ++i) errors[w][i] = ms[w][i] - average[i];
    }
    for (double& v : q_sum) v /= world;
    q = warm_start ? q_sum : Matrix();
    return average;
  }
};

TEST(PowerSgdTest, SpecIsCanonicalAndParametersAreChecked) {
  auto made = make_compressor("powersgd", {});
  ASSERT_TRUE(made.is_ok());
  EXPECT_EQ(made.value()->spec(),
            "powersgd:rank=4,warm_start=true,error_feedback=true,min_compression_rate=2");
  EXPECT_EQ(made.value()->aggregation(), Aggregation::kSum);
  EXPECT_EQ(made.value()->payload_dtype(), DType::kF32);
  EXPECT_EQ(made.value()->rounds(), 2);
  for (const char* bad :
       {"powersgd:rank=0", "powersgd:rank=65", "powersgd:rank=1.5",
        "powersgd:min_compression_rate=-1", "powersgd:warm_start=maybe", "fp16(powersgd)"}) {
    EXPECT_FALSE(make_compressor(bad, {}).is_ok()) << bad;
  }
}

TEST(PowerSgdTest, RankCoveringTheMatrixReproducesIt) {
  // r = min(n, m): P spans the column space of the summed M, so P P^T M == M.
  for (const Shape& shape : {Shape{8, 20}, Shape{30, 6}, Shape{5, 2, 3}}) {
    for (int world : {1, 3}) {
      auto owned = make_ranks("powersgd:rank=64,min_compression_rate=0", world, {{"w", shape}});
      const int64_t numel = shape_numel(shape);
      std::vector<std::vector<float>> grads;
      for (int r = 0; r < world; ++r) grads.push_back(gaussian(numel, 7 + r));
      auto exchanged = testing::serial_exchange(pointers(owned), 0, grads, {0, 0});
      ASSERT_TRUE(exchanged.is_ok()) << exchanged.status().to_string();
      const int64_t n = shape[0];
      const int64_t m = numel / n;
      EXPECT_EQ(exchanged->payload_bytes[0], static_cast<size_t>(n * std::min(n, m) * 4));
      for (int64_t i = 0; i < numel; ++i) {
        double mean = 0;
        for (int r = 0; r < world; ++r) mean += grads[r][i];
        mean /= world;
        for (int r = 0; r < world; ++r) {
          ASSERT_NEAR(exchanged->averaged[r][i], mean, 2e-5)
              << shape_to_string(shape) << " world " << world << " index " << i;
        }
      }
    }
  }
}

TEST(PowerSgdTest, ErrorPlusAverageIsTheCompensatedGradient) {
  // error_r = M_r - P Q^T / W and the average is P Q^T / W, so error_r + average == M_r.
  const Shape shape = {40, 30};
  for (int world : {1, 2}) {
    auto owned = make_ranks("powersgd:rank=2", world, {{"w", shape}});
    for (int step = 0; step < 3; ++step) {
      std::vector<std::vector<float>> grads;
      std::vector<std::vector<float>> old_errors;
      for (int r = 0; r < world; ++r) {
        grads.push_back(gaussian(1200, 100 * step + r));
        old_errors.push_back(exported(*owned[r], "w:powersgd.error"));
        if (old_errors.back().empty()) old_errors.back().assign(1200, 0.0f);
      }
      auto exchanged = testing::serial_exchange(pointers(owned), 0, grads, {step, 0});
      ASSERT_TRUE(exchanged.is_ok()) << exchanged.status().to_string();
      for (int r = 0; r < world; ++r) {
        const std::vector<float> error = exported(*owned[r], "w:powersgd.error");
        ASSERT_EQ(error.size(), 1200u);
        for (size_t i = 0; i < 1200; ++i) {
          const double compensated = static_cast<double>(grads[r][i]) + old_errors[r][i];
          ASSERT_NEAR(error[i] + exchanged->averaged[r][i], compensated,
                      1e-5 * (1 + std::fabs(compensated)))
              << "world " << world << " step " << step << " rank " << r << " index " << i;
        }
      }
    }
  }
}

TEST(PowerSgdTest, NextRoundUsesAnOrthonormalP) {
  // With M = [I | 0] (16 x 40), Q = M^T P = [P; 0]: round 1's payload shows P.
  const int64_t n = 16;
  const int64_t m = 40;
  const int rank = 3;
  auto owned = make_ranks("powersgd:rank=3", 1, {{"w", {n, m}}});
  Compressor& c = *owned[0];
  std::vector<float> grad(static_cast<size_t>(n * m), 0.0f);
  for (int64_t i = 0; i < n; ++i) grad[i * m + i] = 1.0f;
  for (int step = 0; step < 2; ++step) {
    std::vector<std::byte> p(c.max_compressed_bytes(0));
    auto used = c.compress(0, {grad.data(), DType::kF32, {n, m}}, p, {step, 0});
    ASSERT_TRUE(used.is_ok()) << used.status().to_string();
    ASSERT_EQ(*used, static_cast<size_t>(n * rank * 4));
    p.resize(*used);
    std::vector<std::byte> q_bytes(c.max_compressed_bytes(0));
    auto q_used = c.next_round(0, 0, p, q_bytes, {step, 0});
    ASSERT_TRUE(q_used.is_ok()) << q_used.status().to_string();
    ASSERT_EQ(*q_used, static_cast<size_t>(m * rank * 4));
    std::vector<float> q(static_cast<size_t>(m * rank));
    std::memcpy(q.data(), q_bytes.data(), q.size() * 4);
    for (int a = 0; a < rank; ++a) {
      for (int b = 0; b < rank; ++b) {
        double dot = 0;
        for (int64_t k = 0; k < n; ++k) dot += double{q[k * rank + a]} * q[k * rank + b];
        EXPECT_NEAR(dot, a == b ? 1.0 : 0.0, 1e-5) << "columns " << a << ", " << b;
      }
    }
    for (int64_t k = n; k < m; ++k) {
      for (int a = 0; a < rank; ++a) EXPECT_EQ(q[k * rank + a], 0.0f);
    }
    std::vector<float> accum(static_cast<size_t>(n * m), 0.0f);
    q_bytes.resize(*q_used);
    ASSERT_TRUE(c.decompress_accumulate(0, q_bytes, {accum.data(), DType::kF32, {n, m}}).is_ok());
  }
}

TEST(PowerSgdTest, ExchangeMatchesNaiveReferenceOverRanksAndSteps) {
  const int64_t n = 24;
  const int64_t m = 18;
  for (const auto& [spec, warm_start, error_feedback] :
       {std::tuple{"powersgd:rank=2", true, true},
        std::tuple{"powersgd:rank=3,warm_start=false,error_feedback=false", false, false}}) {
    for (int world = 1; world <= 4; ++world) {
      auto owned = make_ranks(spec, world, {{"w", {n, m}}});
      const int rank = std::string(spec).find("rank=2") != std::string::npos ? 2 : 3;
      ReferencePowerSgd reference{n, m, rank, warm_start, error_feedback, "w", {}, {}};
      for (int step = 0; step < 3; ++step) {
        std::vector<std::vector<float>> grads;
        for (int r = 0; r < world; ++r) {
          grads.push_back(gaussian(n * m, 1000 * step + 10 * world + r));
        }
        auto exchanged = testing::serial_exchange(pointers(owned), 0, grads, {step, 0});
        ASSERT_TRUE(exchanged.is_ok()) << exchanged.status().to_string();
        const Matrix expected = reference.step(grads, step);
        const double tolerance = 1e-4 * (1 + max_abs(expected));
        for (int r = 0; r < world; ++r) {
          ASSERT_EQ(exchanged->averaged[r], exchanged->averaged[0]) << "ranks disagree";
        }
        for (int64_t i = 0; i < n * m; ++i) {
          ASSERT_NEAR(exchanged->averaged[0][i], expected[i], tolerance)
              << spec << " world " << world << " step " << step << " index " << i;
        }
      }
    }
  }
}

TEST(PowerSgdTest, DenseTensorsAreSummedExactly) {
  // A 1-D tensor and a matrix too small to be worth compressing: ((4 + 3) * 3 * 2 >= 12).
  for (const Shape& shape : {Shape{37}, Shape{4, 3}, Shape{0}, Shape{1}}) {
    for (int world = 1; world <= 4; ++world) {
      auto owned = make_ranks("powersgd:rank=4", world, {{"w", shape}});
      const int64_t numel = shape_numel(shape);
      ASSERT_EQ(owned[0]->max_compressed_bytes(0), static_cast<size_t>(numel * 4));
      std::vector<std::vector<float>> grads;
      for (int r = 0; r < world; ++r) grads.push_back(gaussian(numel, 3 + r));
      auto exchanged = testing::serial_exchange(pointers(owned), 0, grads, {0, 0});
      ASSERT_TRUE(exchanged.is_ok()) << exchanged.status().to_string();
      EXPECT_EQ(exchanged->payload_bytes[0], 0u) << "dense values travel in round 1";
      for (int64_t i = 0; i < numel; ++i) {
        float sum = 0.0f;
        for (int r = 0; r < world; ++r) sum += grads[r][i];
        for (int r = 0; r < world; ++r) {
          ASSERT_EQ(exchanged->averaged[r][i], sum / static_cast<float>(world));
        }
      }
      EXPECT_TRUE(owned[0]->export_state().empty()) << "a dense tensor has no state";
    }
  }
}

TEST(PowerSgdTest, StateRoundTripContinuesIdentically) {
  const std::vector<TensorInfo> tensors = {{"w", {32, 20}}, {"b", {20}}};
  auto a = make_ranks("powersgd:rank=2", 1, tensors);
  auto b = make_ranks("powersgd:rank=2", 1, tensors);
  for (int step = 0; step < 2; ++step) {
    ASSERT_TRUE(testing::serial_exchange(pointers(a), 0, {gaussian(640, step)}, {step, 0}).is_ok());
  }
  StateDict state = a[0]->export_state();
  ASSERT_TRUE(state.contains("w:powersgd.error"));
  ASSERT_TRUE(state.contains("w:powersgd.q"));
  EXPECT_EQ(state.at("w:powersgd.q").shape, (Shape{20, 2}));
  ASSERT_TRUE(b[0]->import_state(state).is_ok());
  auto from_a = testing::serial_exchange(pointers(a), 0, {gaussian(640, 9)}, {2, 0});
  auto from_b = testing::serial_exchange(pointers(b), 0, {gaussian(640, 9)}, {2, 0});
  ASSERT_TRUE(from_a.is_ok() && from_b.is_ok());
  EXPECT_EQ(from_a->averaged, from_b->averaged);
  EXPECT_EQ(exported(*a[0], "w:powersgd.error"), exported(*b[0], "w:powersgd.error"));
  EXPECT_EQ(a[0]->stats().residual_bytes, 640 * 4);

  StateDict wrong = state;
  wrong["w:powersgd.q"].shape = {2, 20};
  const std::vector<float> kept = exported(*b[0], "w:powersgd.error");
  EXPECT_EQ(b[0]->import_state(wrong).code(), StatusCode::kDataLoss);
  EXPECT_EQ(exported(*b[0], "w:powersgd.error"), kept) << "a rejected import changes nothing";
}

TEST(PowerSgdTest, ProtocolMisuseAndNonFiniteGradients) {
  auto owned = make_ranks("powersgd:rank=2", 1, {{"w", {16, 16}}});
  Compressor& c = *owned[0];
  std::vector<std::byte> out(c.max_compressed_bytes(0));
  std::vector<float> accum(256, 0.0f);
  EXPECT_EQ(c.next_round(0, 0, {}, out, {}).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(c.decompress_accumulate(0, ConstBytes(out.data(), 16 * 2 * 4),
                                    {accum.data(), DType::kF32, {16, 16}})
                .code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(c.subtract_own_payload(0, {}, {accum.data(), DType::kF32, {16, 16}}).code(),
            StatusCode::kFailedPrecondition)
      << "ef(powersgd) must not silently double the error feedback";

  std::vector<float> grad = gaussian(256, 1);
  grad[200] = std::numeric_limits<float>::infinity();
  auto used = c.compress(0, {grad.data(), DType::kF32, {16, 16}}, out, {0, 0});
  ASSERT_FALSE(used.is_ok());
  EXPECT_EQ(used.status().code(), StatusCode::kInvalidArgument);
  // The next clean step works and stays finite.
  auto exchanged = testing::serial_exchange(pointers(owned), 0, {gaussian(256, 2)}, {1, 0});
  ASSERT_TRUE(exchanged.is_ok()) << exchanged.status().to_string();
  for (float v : exchanged->averaged[0]) ASSERT_TRUE(std::isfinite(v));
  for (float v : exported(c, "w:powersgd.error")) ASSERT_TRUE(std::isfinite(v));

  // A zero gradient stays finite (the epsilon in the normalization) and decodes to zero.
  auto plain = make_ranks("powersgd:rank=2,error_feedback=false", 1, {{"w", {16, 16}}});
  auto zeros =
      testing::serial_exchange(pointers(plain), 0, {std::vector<float>(256, 0.0f)}, {0, 0});
  ASSERT_TRUE(zeros.is_ok()) << zeros.status().to_string();
  for (float v : zeros->averaged[0]) ASSERT_EQ(v, 0.0f);
}

}  // namespace
}  // namespace frugal
