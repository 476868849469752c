// qsgd's and terngrad's own semantics against independent references: a bit-by-bit decoder of the
// documented payload layouts, closed-form means and variances (unbiasedness as a statistical
// test with fixed seeds), the payload size formulas, lossless settings, corrupt payloads and
// non-finite values. The contract test covers gather aggregation and determinism.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include <gtest/gtest.h>

#include "compress/registry.h"
#include "compress/testing/compressors.h"
#include "compress/testing/test_data.h"

namespace frugal {
namespace {

std::unique_ptr<Compressor> make(const std::string& spec, uint64_t seed = 7) {
  return testing::make_or_fail(spec, seed);
}

using testing::gaussian;

std::vector<std::byte> compress(Compressor& c, TensorId id, const std::vector<float>& grad,
                                int64_t step) {
  std::vector<std::byte> out(c.max_compressed_bytes(id));
  auto used = c.compress(id, {grad.data(), DType::kF32, c.tensor(id).shape}, out, {step, 0});
  EXPECT_TRUE(used.is_ok()) << used.status().to_string();
  EXPECT_EQ(used.is_ok() ? *used : 0, out.size()) << "fixed size";
  return out;
}

Status decode(Compressor& c, TensorId id, const std::vector<std::byte>& payload,
              std::vector<float>& accum) {
  return c.decompress_accumulate(id, payload, {accum.data(), DType::kF32, c.tensor(id).shape});
}

float load_f32(const std::vector<std::byte>& p, size_t offset) {
  float v;
  std::memcpy(&v, p.data() + offset, 4);
  return v;
}

// Bits [offset, offset + count) of `p` read LSB first, one bit at a time.
uint32_t read_bits(const std::vector<std::byte>& p, size_t offset, int count) {
  uint32_t value = 0;
  for (int b = 0; b < count; ++b) {
    const size_t bit = offset + static_cast<size_t>(b);
    value |= ((static_cast<uint32_t>(p[bit / 8]) >> (bit % 8)) & 1u) << b;
  }
  return value;
}

// ceil(log2(levels + 1)).
int level_bits(int levels) {
  int bits = 0;
  while ((int64_t{1} << bits) < levels + 1) ++bits;
  return bits;
}

const std::vector<int64_t> kSizes = {0, 1, 7, 8, 9, 1000, 100003};

// ---------------------------------------------------------------------------------------------
// QSGD

struct QsgdDecoded {
  std::vector<double> norms;  // per bucket, as sent
  std::vector<int> levels;    // per element
  std::vector<int> signs;     // per element, 1 for negative
};

// Independent decoder of the documented layout. Fails the test on nonzero padding bits.
QsgdDecoded decode_qsgd(const std::vector<std::byte>& p, int64_t n, int levels, int64_t bucket) {
  const int64_t b = bucket == 0 ? std::max<int64_t>(n, 1) : bucket;
  const int64_t buckets = (n + b - 1) / b;
  const int width = level_bits(levels) + 1;
  QsgdDecoded d;
  for (int64_t q = 0; q < buckets; ++q) d.norms.push_back(load_f32(p, 4 * q));
  const size_t base = 32 * static_cast<size_t>(buckets);  // bit offset of the codes
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t code = read_bits(p, base + static_cast<size_t>(i * width), width);
    d.levels.push_back(static_cast<int>(code & ((1u << (width - 1)) - 1)));
    d.signs.push_back(static_cast<int>(code >> (width - 1)));
  }
  for (size_t bit = base + static_cast<size_t>(n * width); bit < 8 * p.size(); ++bit) {
    EXPECT_EQ(read_bits(p, bit, 1), 0u) << "padding bit " << bit;
  }
  return d;
}

TEST(QsgdTest, SpecAndParametersAreValidated) {
  EXPECT_EQ(make("qsgd")->spec(), "qsgd:levels=15,bucket=512");
  EXPECT_EQ(make("qsgd:bucket=0,levels=4")->spec(), "qsgd:levels=4,bucket=0");
  EXPECT_EQ(make("qsgd")->aggregation(), Aggregation::kGather);
  EXPECT_TRUE(make("qsgd")->fixed_size());
  for (const char* bad : {"qsgd:levels=0", "qsgd:levels=32768", "qsgd:levels=2.5", "qsgd:bucket=-1",
                          "fp16(qsgd)", "bf16(qsgd:levels=4)"}) {
    EXPECT_FALSE(make_compressor(bad, {}).is_ok()) << bad;
  }
  auto made = make_compressor("qsgd:levels=40000", {});
  ASSERT_FALSE(made.is_ok());
  EXPECT_NE(made.status().message().find("levels"), std::string::npos);
}

// 4 bytes per bucket norm plus ceil(n (ceil(log2(S + 1)) + 1) / 8) bytes of codes.
TEST(QsgdTest, PayloadSizeMatchesTheFormula) {
  for (int levels : {1, 2, 3, 15, 16, 127, 32767}) {
    for (int64_t bucket : {0, 1, 7, 512}) {
      auto q = make("qsgd:levels=" + std::to_string(levels) + ",bucket=" + std::to_string(bucket));
      const int64_t width = level_bits(levels) + 1;
      for (int64_t n : kSizes) {
        TensorId id = q->register_tensor({"t" + std::to_string(n), {n}}).value();
        const int64_t b = bucket == 0 ? std::max<int64_t>(n, 1) : bucket;
        const int64_t expected = 4 * ((n + b - 1) / b) + (n * width + 7) / 8;
        EXPECT_EQ(q->max_compressed_bytes(id), static_cast<size_t>(expected))
            << q->spec() << " n=" << n;
      }
    }
  }
}

// Every element's level is floor(a) or ceil(a) of a = |x| / norm * S, with the sign of x, at
// every code width (2..16 bits) and size; decompress_accumulate adds exactly what the reference
// decoder reads.
TEST(QsgdTest, BitPackingRoundTripsAtEveryWidthAndSize) {
  for (int levels : {1, 2, 3, 15, 16, 127, 255, 4095, 32767}) {
    for (int64_t bucket : {int64_t{512}, int64_t{0}, int64_t{7}}) {
      if (bucket == 7 && levels > 16) continue;  // small buckets: a few widths suffice
      const std::string spec =
          "qsgd:levels=" + std::to_string(levels) + ",bucket=" + std::to_string(bucket);
      auto q = make(spec);
      for (int64_t n : kSizes) {
        TensorId id = q->register_tensor({"t" + std::to_string(n), {n}}).value();
        auto grad = gaussian(n, static_cast<uint32_t>(n + levels));
        auto payload = compress(*q, id, grad, 1);
        QsgdDecoded d = decode_qsgd(payload, n, levels, bucket);
        const int64_t b = bucket == 0 ? std::max<int64_t>(n, 1) : bucket;
        for (int64_t k = 0; k < static_cast<int64_t>(d.norms.size()); ++k) {
          double norm = 0;
          for (int64_t i = k * b; i < std::min(n, (k + 1) * b); ++i) {
            norm += static_cast<double>(grad[i]) * grad[i];
          }
          ASSERT_NEAR(d.norms[k], std::sqrt(norm), 1e-6 * std::sqrt(norm)) << spec << " n=" << n;
        }
        std::vector<float> accum(static_cast<size_t>(n), 0.25f);
        ASSERT_TRUE(decode(*q, id, payload, accum).is_ok());
        for (int64_t i = 0; i < n; ++i) {
          const double norm = d.norms[i / b];
          const double a = norm > 0 ? std::fabs(grad[i]) / norm * levels : 0;
          const double slack = 1e-6 * levels;  // f32 arithmetic in the encoder
          const int level = d.levels[i];
          ASSERT_GE(level, std::floor(a - slack)) << spec << " n=" << n << " i=" << i;
          ASSERT_LE(level, std::min<double>(levels, std::ceil(a + slack)))
              << spec << " n=" << n << " i=" << i;
          if (level > 0) {
            ASSERT_EQ(d.signs[i], grad[i] < 0 ? 1 : 0) << "sign of element " << i;
          }
          const double value = (d.signs[i] ? -1 : 1) * level * (norm / levels);
          ASSERT_NEAR(accum[i], 0.25 + value, 2e-6 * (std::fabs(value) + 0.25))
              << spec << " n=" << n << " i=" << i;
        }
      }
    }
  }
}

// The mean decode over T steps (a fresh random stream each step) is within 5 sigma of x for
// every element, sigma^2 = (norm / S)^2 f (1 - f) / T with f = frac(|x| / norm * S); the summed
// empirical variance matches the closed form within 10%.
TEST(QsgdTest, IsUnbiased) {
  const int64_t n = 1000;
  const int steps = 3000;
  const int levels = 4;
  auto grad = gaussian(n, 21);
  grad[3] = 0.0f;
  for (int64_t bucket : {0, 100}) {
    auto q = make("qsgd:levels=4,bucket=" + std::to_string(bucket));
    TensorId id = q->register_tensor({"w", {n}}).value();
    std::vector<double> sum(static_cast<size_t>(n), 0.0);
    std::vector<double> sum_squares(static_cast<size_t>(n), 0.0);
    std::vector<float> decoded(static_cast<size_t>(n));
    for (int step = 0; step < steps; ++step) {
      std::fill(decoded.begin(), decoded.end(), 0.0f);
      ASSERT_TRUE(decode(*q, id, compress(*q, id, grad, step), decoded).is_ok());
      for (int64_t i = 0; i < n; ++i) {
        sum[i] += decoded[i];
        sum_squares[i] += static_cast<double>(decoded[i]) * decoded[i];
      }
    }
    const int64_t b = bucket == 0 ? n : bucket;
    double variance_total = 0;
    double empirical_total = 0;
    for (int64_t i = 0; i < n; ++i) {
      double norm = 0;
      for (int64_t j = i / b * b; j < std::min(n, (i / b + 1) * b); ++j) {
        norm += static_cast<double>(grad[j]) * grad[j];
      }
      norm = std::sqrt(norm);
      const double a = std::fabs(grad[i]) / norm * levels;
      const double f = a - std::floor(a);
      const double variance = (norm / levels) * (norm / levels) * f * (1 - f);
      const double mean = sum[i] / steps;
      ASSERT_NEAR(mean, grad[i], 5 * std::sqrt(variance / steps) + 1e-5 * norm / levels)
          << "bucket " << bucket << " index " << i;
      variance_total += variance;
      empirical_total += sum_squares[i] / steps - mean * mean;
    }
    EXPECT_NEAR(empirical_total / variance_total, 1.0, 0.1) << "bucket " << bucket;
  }
}

// levels = 32767: every element is within one level, norm / S, of x (relative error 1/S of its
// bucket's norm); a lone nonzero element per bucket (level S exactly) comes back to within f32
// rounding.
TEST(QsgdTest, ManyLevelsAreNearlyLossless) {
  const int levels = 32767;
  auto q = make("qsgd:levels=32767,bucket=512");
  TensorId id = q->register_tensor({"w", {5000}}).value();
  auto grad = gaussian(5000, 5);
  std::vector<float> decoded(5000, 0.0f);
  ASSERT_TRUE(decode(*q, id, compress(*q, id, grad, 0), decoded).is_ok());
  for (int64_t i = 0; i < 5000; ++i) {
    double norm = 0;
    for (int64_t j = i / 512 * 512; j < std::min<int64_t>(5000, (i / 512 + 1) * 512); ++j) {
      norm += static_cast<double>(grad[j]) * grad[j];
    }
    ASSERT_LE(std::fabs(decoded[i] - grad[i]), std::sqrt(norm) / levels * (1 + 1e-5)) << i;
  }
  std::vector<float> spikes(5000, 0.0f);
  for (int64_t i = 3; i < 5000; i += 512) spikes[i] = static_cast<float>(i) * -0.37f;
  std::fill(decoded.begin(), decoded.end(), 0.0f);
  ASSERT_TRUE(decode(*q, id, compress(*q, id, spikes, 0), decoded).is_ok());
  for (int64_t i = 0; i < 5000; ++i) {
    ASSERT_NEAR(decoded[i], spikes[i], 1e-6 * std::fabs(spikes[i])) << i;
  }
}

TEST(QsgdTest, CorruptPayloadsAreRejected) {
  auto q = make("qsgd:levels=5,bucket=8");  // 3 level bits + sign: 4 bits per element
  TensorId id = q->register_tensor({"w", {16}}).value();
  const auto good = compress(*q, id, gaussian(16, 1), 0);
  ASSERT_EQ(good.size(), 2 * 4 + 8u);
  std::vector<float> accum(16, 0.0f);
  ASSERT_TRUE(decode(*q, id, good, accum).is_ok());
  for (size_t size : {size_t{0}, good.size() - 1, good.size() + 1}) {
    std::vector<std::byte> wrong(size);
    EXPECT_EQ(decode(*q, id, wrong, accum).code(), StatusCode::kDataLoss) << size;
  }
  for (float norm :
       {-1.0f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    auto bad = good;
    std::memcpy(bad.data() + 4, &norm, 4);
    EXPECT_EQ(decode(*q, id, bad, accum).code(), StatusCode::kDataLoss) << norm;
  }
  auto bad = good;
  bad[8 + 5] = std::byte{0x70};  // element 11: level 7 > levels = 5
  auto status = decode(*q, id, bad, accum);
  EXPECT_EQ(status.code(), StatusCode::kDataLoss);
  EXPECT_NE(status.message().find("'w'"), std::string::npos) << status.message();
}

TEST(QsgdTest, NonFiniteValuesAnywhereAreAnError) {
  for (const char* spec : {"qsgd", "qsgd:bucket=0", "qsgd:bucket=7"}) {
    auto q = make(spec);
    TensorId id = q->register_tensor({"w", {1003}}).value();
    for (size_t at : {size_t{0}, size_t{501}, size_t{1002}}) {
      for (float bad :
           {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
        auto grad = gaussian(1003, 2);
        grad[at] = bad;
        std::vector<std::byte> out(q->max_compressed_bytes(id));
        auto used = q->compress(id, {grad.data(), DType::kF32, {1003}}, out, {0, 0});
        ASSERT_FALSE(used.is_ok()) << spec << " at " << at;
        EXPECT_NE(used.status().message().find("non-finite"), std::string::npos);
      }
    }
  }
  // Finite values whose norm exceeds the f32 range are rejected with their own message.
  auto q = make("qsgd:bucket=0");
  TensorId id = q->register_tensor({"w", {4}}).value();
  std::vector<float> huge(4, 3e38f);
  std::vector<std::byte> out(q->max_compressed_bytes(id));
  auto used = q->compress(id, {huge.data(), DType::kF32, {4}}, out, {0, 0});
  ASSERT_FALSE(used.is_ok());
  EXPECT_NE(used.status().message().find("L2 norm"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// TernGrad

TEST(TernGradTest, SpecAndParametersAreValidated) {
  EXPECT_EQ(make("terngrad")->spec(), "terngrad:clip=0");
  EXPECT_EQ(make("terngrad:clip=2.5")->spec(), "terngrad:clip=2.5");
  EXPECT_EQ(make("terngrad")->aggregation(), Aggregation::kGather);
  for (const char* bad : {"terngrad:clip=-1", "terngrad:clip=x", "fp16(terngrad)"}) {
    EXPECT_FALSE(make_compressor(bad, {}).is_ok()) << bad;
  }
}

// Ternary inputs {-c, 0, +c} are reproduced exactly (probabilities 0 and 1), and the 2-bit codes
// read bit by bit are 0 / 1 (+) / 2 (-), with zero padding, at every size.
TEST(TernGradTest, PayloadLayoutAndSizeAndTernaryInputsAreExact) {
  auto t = make("terngrad");
  for (int64_t n : kSizes) {
    TensorId id = t->register_tensor({"t" + std::to_string(n), {n}}).value();
    EXPECT_EQ(t->max_compressed_bytes(id), static_cast<size_t>(4 + (n + 3) / 4));
    std::mt19937 engine(static_cast<uint32_t>(n));
    std::vector<float> grad(static_cast<size_t>(n));
    for (float& x : grad) x = 0.75f * static_cast<float>(static_cast<int>(engine() % 3) - 1);
    if (n > 0) grad[0] = -0.75f;
    auto payload = compress(*t, id, grad, 2);
    EXPECT_EQ(load_f32(payload, 0), n > 0 ? 0.75f : 0.0f);
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t expected = grad[i] == 0 ? 0 : grad[i] > 0 ? 1 : 2;
      ASSERT_EQ(read_bits(payload, 32 + 2 * static_cast<size_t>(i), 2), expected) << i;
    }
    for (size_t bit = 32 + 2 * static_cast<size_t>(n); bit < 8 * payload.size(); ++bit) {
      ASSERT_EQ(read_bits(payload, bit, 1), 0u) << "padding bit " << bit;
    }
    std::vector<float> accum(static_cast<size_t>(n), 0.0f);
    ASSERT_TRUE(decode(*t, id, payload, accum).is_ok());
    EXPECT_EQ(accum, grad) << "n=" << n;
  }
}

// decoded = s sign(x) with probability |x| / s, s = max |x|: mean x, variance s |x| - x^2.
TEST(TernGradTest, IsUnbiased) {
  const int64_t n = 1000;
  const int steps = 3000;
  auto grad = gaussian(n, 31);
  grad[10] = 0.0f;
  double s = 0;
  for (float x : grad) s = std::max(s, static_cast<double>(std::fabs(x)));
  auto t = make("terngrad");
  TensorId id = t->register_tensor({"w", {n}}).value();
  std::vector<double> sum(static_cast<size_t>(n), 0.0);
  std::vector<double> nonzero(static_cast<size_t>(n), 0.0);
  std::vector<float> decoded(static_cast<size_t>(n));
  for (int step = 0; step < steps; ++step) {
    std::fill(decoded.begin(), decoded.end(), 0.0f);
    ASSERT_TRUE(decode(*t, id, compress(*t, id, grad, step), decoded).is_ok());
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_TRUE(decoded[i] == 0 || std::fabs(decoded[i]) == static_cast<float>(s));
      sum[i] += decoded[i];
      nonzero[i] += decoded[i] != 0 ? 1 : 0;
    }
  }
  double variance_total = 0;
  double empirical_total = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double x = grad[i];
    const double variance = s * std::fabs(x) - x * x;
    const double mean = sum[i] / steps;
    ASSERT_NEAR(mean, x, 5 * std::sqrt(variance / steps) + 1e-6 * s) << "index " << i;
    variance_total += variance;
    empirical_total += nonzero[i] / steps * s * s - mean * mean;
  }
  EXPECT_NEAR(empirical_total / variance_total, 1.0, 0.1);
}

// clip=C: s = C sigma (population standard deviation) when that is below max |x|; elements beyond
// it always decode to +-s. A constant tensor (sigma = 0) is not clipped.
TEST(TernGradTest, ClippingUsesTheStandardDeviation) {
  auto t = make("terngrad:clip=2.5");
  TensorId id = t->register_tensor({"w", {10000}}).value();
  auto grad = gaussian(10000, 8);
  grad[7] = 50.0f;
  grad[8] = -40.0f;
  double sum = 0;
  double squares = 0;
  for (float x : grad) {
    sum += x;
    squares += static_cast<double>(x) * x;
  }
  const double mean = sum / 10000;
  const double sigma = std::sqrt(squares / 10000 - mean * mean);
  auto payload = compress(*t, id, grad, 0);
  const float s = load_f32(payload, 0);
  EXPECT_NEAR(s, 2.5 * sigma, 1e-5 * sigma);
  std::vector<float> decoded(10000, 0.0f);
  ASSERT_TRUE(decode(*t, id, payload, decoded).is_ok());
  for (int64_t i = 0; i < 10000; ++i) {
    if (std::fabs(grad[i]) >= s) {
      ASSERT_EQ(decoded[i], std::copysign(s, grad[i])) << i;
    }
  }
  TensorId flat = t->register_tensor({"flat", {100}}).value();
  std::vector<float> constant(100, 0.5f);
  std::vector<float> accum(100, 0.0f);
  ASSERT_TRUE(decode(*t, flat, compress(*t, flat, constant, 0), accum).is_ok());
  EXPECT_EQ(accum, constant);
}

TEST(TernGradTest, CorruptPayloadsAreRejected) {
  auto t = make("terngrad");
  TensorId id = t->register_tensor({"w", {10}}).value();
  const auto good = compress(*t, id, gaussian(10, 1), 0);
  ASSERT_EQ(good.size(), 4 + 3u);
  std::vector<float> accum(10, 0.0f);
  for (size_t size : {size_t{0}, size_t{4}, size_t{6}, size_t{8}}) {
    std::vector<std::byte> wrong(size);
    EXPECT_EQ(decode(*t, id, wrong, accum).code(), StatusCode::kDataLoss) << size;
  }
  for (float scale : {-1.0f, std::numeric_limits<float>::quiet_NaN()}) {
    auto bad = good;
    std::memcpy(bad.data(), &scale, 4);
    EXPECT_EQ(decode(*t, id, bad, accum).code(), StatusCode::kDataLoss) << scale;
  }
  for (size_t byte : {size_t{4}, size_t{6}}) {  // code 3 in a full byte and in the tail
    auto bad = good;
    bad[byte] |= std::byte{0x03};
    EXPECT_EQ(decode(*t, id, bad, accum).code(), StatusCode::kDataLoss) << byte;
  }
}

TEST(TernGradTest, NonFiniteValuesAnywhereAreAnError) {
  for (const char* spec : {"terngrad", "terngrad:clip=2.5"}) {
    auto t = make(spec);
    TensorId id = t->register_tensor({"w", {1003}}).value();
    for (size_t at : {size_t{0}, size_t{501}, size_t{1002}}) {
      for (float bad :
           {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
        auto grad = gaussian(1003, 2);
        grad[at] = bad;
        std::vector<std::byte> out(t->max_compressed_bytes(id));
        auto used = t->compress(id, {grad.data(), DType::kF32, {1003}}, out, {0, 0});
        ASSERT_FALSE(used.is_ok()) << spec << " at " << at;
        EXPECT_EQ(used.status().code(), StatusCode::kInvalidArgument);
      }
    }
  }
}

}  // namespace
}  // namespace frugal
