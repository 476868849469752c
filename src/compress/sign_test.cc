// Tests of the sign family (signsgd, ef-signsgd, onebit) and its bit packing against independent
// references: a bit-by-bit packer, a brute-force majority vote, and a serial double-precision
// simulation of DeepSpeed's compressed allreduce with worker and server errors.
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include <gtest/gtest.h>

#include "compress/bit_pack.h"
#include "compress/registry.h"
#include "compress/testing/compressors.h"
#include "compress/testing/serial_exchange.h"
#include "compress/testing/test_data.h"

namespace frugal {
namespace {

using testing::gaussian;

std::unique_ptr<Compressor> make(const std::string& spec, int world_size) {
  return testing::make_or_fail(spec, 5, world_size);
}

std::vector<float> exported(const Compressor& c, const std::string& key) {
  return testing::exported_floats(c, key);
}

std::vector<std::byte> compress(Compressor& c, TensorId id, const std::vector<float>& grad) {
  std::vector<std::byte> out(c.max_compressed_bytes(id));
  auto used = c.compress(id, ConstView{grad.data(), DType::kF32, c.tensor(id).shape}, out, {0, 0});
  EXPECT_TRUE(used.is_ok()) << used.status().to_string();
  out.resize(used.is_ok() ? *used : 0);
  return out;
}

float load_float(const std::byte* p) {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}

// Decodes a scaled-sign chunk (f32 scale, then bits LSB first, set = negative) by hand.
std::vector<double> decode_scaled_chunk(const std::byte* chunk, int64_t n) {
  const double scale = load_float(chunk);
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const bool negative = ((static_cast<unsigned>(chunk[4 + i / 8]) >> (i % 8)) & 1u) != 0;
    out[static_cast<size_t>(i)] = negative ? -scale : scale;
  }
  return out;
}

// --- bit packing ------------------------------------------------------------------------------

TEST(BitPackTest, RoundTripAtEdgeSizes) {
  for (size_t n : {0, 1, 7, 8, 9, 1000, 100003}) {
    std::vector<float> values = gaussian(static_cast<int64_t>(n), static_cast<uint32_t>(n));
    for (size_t i = 0; i < n; i += 5) values[i] = (i % 10 == 0) ? 0.0f : -0.0f;  // zeros are +
    std::vector<std::byte> packed(packed_bytes(static_cast<int64_t>(n)) + 1, std::byte{0xCD});
    EXPECT_FALSE(pack_negative_bits(values.data(), n, packed.data()));
    EXPECT_EQ(packed.back(), std::byte{0xCD}) << "wrote past packed_bytes(" << n << ")";
    for (size_t i = 0; i < n; ++i) {
      const bool expected = values[i] < 0.0f;
      const bool bit = ((static_cast<unsigned>(packed[i / 8]) >> (i % 8)) & 1u) != 0;
      ASSERT_EQ(bit, expected) << "n " << n << " index " << i;
      ASSERT_EQ(packed_bit(packed.data(), i), expected);
    }
    for (size_t i = n; i < packed_bytes(static_cast<int64_t>(n)) * 8; ++i) {
      EXPECT_FALSE(packed_bit(packed.data(), i)) << "padding bit " << i << " of n " << n;
    }
    std::vector<float> decoded(n + 1, 1.0f);
    add_signed_bits(packed.data(), n, 0.5f, decoded.data());
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(decoded[i], values[i] < 0.0f ? 0.5f : 1.5f) << "n " << n << " index " << i;
    }
    EXPECT_EQ(decoded[n], 1.0f) << "accumulated past n";
  }
}

TEST(BitPackTest, NonFiniteValuesAreReported) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    for (size_t at : {0, 8, 99}) {
      std::vector<float> values(100, 1.0f);
      values[at] = bad;
      std::vector<std::byte> packed(packed_bytes(100));
      EXPECT_TRUE(pack_negative_bits(values.data(), values.size(), packed.data())) << at;
      std::vector<float> residual(100, 0.0f);
      EXPECT_TRUE(compensated_sums(values.data(), residual.data(), 100).non_finite) << at;
      EXPECT_TRUE(compensated_sums(nullptr, values.data(), 100).non_finite) << at;
    }
  }
}

TEST(BitPackTest, CompensatedKernelsMatchNaiveLoops) {
  for (size_t n : {0, 13, 1000, 100003}) {
    const std::vector<float> values = gaussian(static_cast<int64_t>(n), 1);
    std::vector<float> residual = gaussian(static_cast<int64_t>(n), 2);
    for (float& r : residual) r *= 0.1f;
    double abs_sum = 0;
    double square_sum = 0;
    for (size_t i = 0; i < n; ++i) {
      const double p = static_cast<double>(values[i] + residual[i]);
      abs_sum += std::fabs(p);
      square_sum += p * p;
    }
    const CompensatedSums sums = compensated_sums(values.data(), residual.data(), n);
    EXPECT_FALSE(sums.non_finite);
    EXPECT_NEAR(sums.abs_sum, abs_sum, 1e-9 * (1 + abs_sum));
    EXPECT_NEAR(sums.square_sum, square_sum, 1e-9 * (1 + square_sum));

    const float scale = 0.75f;
    std::vector<float> expected_residual(n);
    std::vector<bool> expected_bits(n);
    for (size_t i = 0; i < n; ++i) {
      const float p = values[i] + residual[i];
      expected_bits[i] = p < 0.0f;
      expected_residual[i] = p < 0.0f ? p + scale : p - scale;
    }
    std::vector<std::byte> packed(packed_bytes(static_cast<int64_t>(n)));
    pack_compensated(values.data(), residual.data(), n, scale, packed.data());
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(packed_bit(packed.data(), i), expected_bits[i]) << i;
      ASSERT_EQ(residual[i], expected_residual[i]) << i;  // the same float operations
    }
    // Without values the residual itself is compressed (the server side).
    std::vector<float> server = expected_residual;
    pack_compensated(nullptr, server.data(), n, scale, packed.data());
    for (size_t i = 0; i < n; ++i) {
      const float p = expected_residual[i];
      ASSERT_EQ(packed_bit(packed.data(), i), p < 0.0f) << i;
      ASSERT_EQ(server[i], p < 0.0f ? p + scale : p - scale) << i;
    }
  }
}

// --- signsgd ----------------------------------------------------------------------------------

TEST(SignSgdTest, MajorityVoteOverRanksMatchesBruteForce) {
  for (int world = 1; world <= 4; ++world) {
    for (int64_t numel : {1000, 10, 3}) {  // 3 < 4 ranks leaves an empty chunk
      std::vector<std::unique_ptr<Compressor>> owned;
      std::vector<Compressor*> ranks;
      std::vector<std::vector<float>> grads;
      for (int r = 0; r < world; ++r) {
        owned.push_back(make("signsgd", world));
        ASSERT_TRUE(owned.back()->register_tensor({"w", {numel}}).is_ok());
        ranks.push_back(owned.back().get());
        grads.push_back(gaussian(numel, static_cast<uint32_t>(100 * world + r)));
        grads.back()[0] = r % 2 == 0 ? 0.0f : -1.0f;  // ties at index 0 for even worlds
      }
      auto exchanged = testing::serial_exchange(ranks, 0, grads, {0, 0});
      ASSERT_TRUE(exchanged.is_ok()) << exchanged.status().to_string();
      size_t expected_bytes = 0;
      for (int c = 0; c < world; ++c) {
        const ChunkBounds b = chunk_bounds(numel, world, c);
        expected_bytes += static_cast<size_t>((b.end - b.begin + 7) / 8);
      }
      for (int r = 0; r < world; ++r) {
        EXPECT_EQ(exchanged->payload_bytes[r], expected_bytes);
        for (int64_t i = 0; i < numel; ++i) {
          int negative = 0;
          for (int s = 0; s < world; ++s) negative += grads[s][i] < 0.0f ? 1 : 0;
          const float vote = 2 * negative > world ? -1.0f : 1.0f;  // ties are +
          ASSERT_EQ(exchanged->averaged[r][i], vote)
              << "world " << world << " numel " << numel << " rank " << r << " index " << i;
        }
      }
    }
  }
}

TEST(SignSgdTest, OwnPayloadIsTheUnscaledSign) {
  auto c = make("signsgd", 3);
  ASSERT_TRUE(c->register_tensor({"w", {20}}).is_ok());
  const std::vector<float> grad = gaussian(20, 4);
  auto payload = compress(*c, 0, grad);
  std::vector<float> target(20, 0.0f);
  ASSERT_TRUE(c->subtract_own_payload(0, payload, {target.data(), DType::kF32, {20}}).is_ok());
  for (size_t i = 0; i < 20; ++i) EXPECT_EQ(target[i], grad[i] < 0.0f ? 1.0f : -1.0f) << i;
}

TEST(SignSgdTest, MalformedPayloadsAreRejected) {
  auto c = make("signsgd", 2);
  ASSERT_TRUE(c->register_tensor({"w", {20}}).is_ok());
  auto payload = compress(*c, 0, gaussian(20, 1));
  ASSERT_EQ(payload.size(), 4u);  // 2 chunks of 10 elements, 2 bytes each
  std::vector<float> accum(20, 0.0f);
  payload.pop_back();
  EXPECT_EQ(c->decompress_accumulate(0, payload, {accum.data(), DType::kF32, {20}}).code(),
            StatusCode::kDataLoss);
  std::vector<std::byte> out(2);
  std::vector<ConstBytes> one = {ConstBytes(payload.data(), 2)};
  EXPECT_FALSE(c->reduce_chunk(0, 0, one, out, {}).is_ok()) << "one payload for two ranks";
  std::vector<ConstBytes> short_chunks = {ConstBytes(payload.data(), 1),
                                          ConstBytes(payload.data(), 1)};
  EXPECT_EQ(c->reduce_chunk(0, 0, short_chunks, out, {}).code(), StatusCode::kDataLoss);
  std::vector<ConstBytes> two = {ConstBytes(payload.data(), 2), ConstBytes(payload.data(), 2)};
  EXPECT_FALSE(c->reduce_chunk(0, 2, two, out, {}).is_ok()) << "chunk out of range";
}

// --- ef-signsgd and onebit --------------------------------------------------------------------

class ScaledSignTest : public ::testing::TestWithParam<std::string> {
 protected:
  bool l1() const { return GetParam() == "ef-signsgd"; }
  std::string key(const std::string& field) const { return "w:" + GetParam() + "." + field; }
  double reference_scale(const std::vector<double>& p) const {
    if (p.empty()) return 0;
    double sum = 0;
    for (double v : p) sum += l1() ? std::fabs(v) : v * v;
    return l1() ? sum / static_cast<double>(p.size())
                : std::sqrt(sum / static_cast<double>(p.size()));
  }
};

// Small integers make every operation exact: for ef-signsgd |p| in {1, 3} gives scale 2, for
// onebit |p| in {1, 7} gives scale sqrt((1 + 49) / 2) = 5.
TEST_P(ScaledSignTest, WorkerErrorIdentityIsExactOnExactArithmetic) {
  auto c = make(GetParam(), 1);
  ASSERT_TRUE(c->register_tensor({"w", {16}}).is_ok());
  std::vector<float> grad(16);
  for (size_t i = 0; i < 16; ++i) {
    const float magnitude = i % 2 == 0 ? 1.0f : (l1() ? 3.0f : 7.0f);
    grad[i] = (i * 7) % 3 == 0 ? -magnitude : magnitude;
  }
  auto payload = compress(*c, 0, grad);
  ASSERT_EQ(payload.size(), 4u + 2u);
  EXPECT_EQ(load_float(payload.data()), l1() ? 2.0f : 5.0f);
  const std::vector<double> sent = decode_scaled_chunk(payload.data(), 16);
  const std::vector<float> error = exported(*c, key("worker_error"));
  ASSERT_EQ(error.size(), 16u);
  for (size_t i = 0; i < 16; ++i) {
    EXPECT_EQ(sent[i] + error[i], static_cast<double>(grad[i])) << i;  // old error is zero
  }
  // subtract_own_payload leaves exactly the new error.
  std::vector<float> target = grad;
  ASSERT_TRUE(c->subtract_own_payload(0, payload, {target.data(), DType::kF32, {16}}).is_ok());
  EXPECT_EQ(target, error);
}

TEST_P(ScaledSignTest, WorkerErrorIdentityOverSteps) {
  const int world = 3;
  const int64_t numel = 1001;
  auto c = make(GetParam(), world);
  ASSERT_TRUE(c->register_tensor({"w", {numel}}).is_ok());
  for (int step = 0; step < 3; ++step) {
    const std::vector<float> old_error = exported(*c, key("worker_error"));
    const std::vector<float> grad = gaussian(numel, 30 + step);
    auto payload = compress(*c, 0, grad);
    const std::vector<float> new_error = exported(*c, key("worker_error"));
    size_t offset = 0;
    for (int chunk = 0; chunk < world; ++chunk) {
      const ChunkBounds b = chunk_bounds(numel, world, chunk);
      const std::vector<double> sent =
          decode_scaled_chunk(payload.data() + offset, b.end - b.begin);
      std::vector<double> compensated;
      for (int64_t i = b.begin; i < b.end; ++i) compensated.push_back(grad[i] + old_error[i]);
      EXPECT_NEAR(load_float(payload.data() + offset), reference_scale(compensated),
                  1e-6 * reference_scale(compensated));
      for (int64_t i = b.begin; i < b.end; ++i) {
        const double input = static_cast<double>(grad[i]) + old_error[i];
        ASSERT_NEAR(sent[i - b.begin] + new_error[i], input, 1e-6 * (1 + std::fabs(input)))
            << "step " << step << " index " << i;
      }
      offset += 4 + static_cast<size_t>((b.end - b.begin + 7) / 8);
    }
    EXPECT_EQ(offset, payload.size());
  }
}

TEST_P(ScaledSignTest, ServerErrorIdentity) {
  const int world = 3;
  const int64_t numel = 100;
  const int chunk = 1;
  const ChunkBounds b = chunk_bounds(numel, world, chunk);
  const int64_t n = b.end - b.begin;
  std::vector<std::unique_ptr<Compressor>> ranks;
  for (int r = 0; r < world; ++r) {
    ranks.push_back(make(GetParam(), world));
    ASSERT_TRUE(ranks.back()->register_tensor({"w", {numel}}).is_ok());
  }
  Compressor& owner = *ranks[chunk];
  size_t chunk_offset = 0;
  for (int c = 0; c < chunk; ++c) {
    chunk_offset += owner.chunk_payload_bytes(chunk_bounds(numel, world, c).end -
                                              chunk_bounds(numel, world, c).begin);
  }
  const size_t chunk_size = owner.chunk_payload_bytes(n);
  for (int step = 0; step < 3; ++step) {
    std::vector<float> old_error = exported(owner, key("server_error"));
    if (old_error.empty()) old_error.assign(static_cast<size_t>(n), 0.0f);
    std::vector<std::vector<std::byte>> payloads;
    std::vector<ConstBytes> chunks;
    for (int r = 0; r < world; ++r) {
      payloads.push_back(compress(*ranks[r], 0, gaussian(numel, 10 * step + r)));
    }
    for (int r = 0; r < world; ++r) {
      chunks.emplace_back(payloads[r].data() + chunk_offset, chunk_size);
    }
    std::vector<std::byte> reduced(chunk_size);
    ASSERT_TRUE(owner.reduce_chunk(0, chunk, chunks, reduced, {step, 0}).is_ok());
    const std::vector<float> new_error = exported(owner, key("server_error"));
    ASSERT_EQ(new_error.size(), static_cast<size_t>(n));
    // The server's input: its old error plus the average of the ranks' decoded chunks.
    std::vector<double> compensated(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) compensated[i] = old_error[i];
    for (int r = 0; r < world; ++r) {
      const std::vector<double> decoded = decode_scaled_chunk(chunks[r].data(), n);
      for (int64_t i = 0; i < n; ++i) compensated[i] += decoded[i] / world;
    }
    EXPECT_NEAR(load_float(reduced.data()), reference_scale(compensated),
                1e-5 * reference_scale(compensated));
    const std::vector<double> sent = decode_scaled_chunk(reduced.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_NEAR(sent[i] + new_error[i], compensated[i], 1e-5) << "step " << step << " " << i;
    }
  }
}

// The whole exchange against a serial double-precision simulation of the algorithm, over 1..4
// ranks, with uneven chunks and empty chunks, for three steps (so both errors matter).
TEST_P(ScaledSignTest, TwoPhaseExchangeMatchesSerialSimulation) {
  for (int world = 1; world <= 4; ++world) {
    for (int64_t numel : {1031, 10, 3}) {
      std::vector<std::unique_ptr<Compressor>> owned;
      std::vector<Compressor*> ranks;
      for (int r = 0; r < world; ++r) {
        owned.push_back(make(GetParam(), world));
        ASSERT_TRUE(owned.back()->register_tensor({"w", {numel}}).is_ok());
        ranks.push_back(owned.back().get());
      }
      std::vector<std::vector<double>> worker_error(world, std::vector<double>(numel, 0.0));
      std::vector<double> server_error(static_cast<size_t>(numel), 0.0);  // chunks side by side
      for (int step = 0; step < 3; ++step) {
        std::vector<std::vector<float>> grads;
        for (int r = 0; r < world; ++r) {
          grads.push_back(gaussian(numel, static_cast<uint32_t>(1000 * step + 10 * world + r)));
        }
        auto exchanged = testing::serial_exchange(ranks, 0, grads, {step, 0});
        ASSERT_TRUE(exchanged.is_ok()) << exchanged.status().to_string();
        for (int r = 1; r < world; ++r) {
          ASSERT_EQ(exchanged->averaged[r], exchanged->averaged[0]) << "ranks disagree";
        }
        for (int c = 0; c < world; ++c) {
          const ChunkBounds b = chunk_bounds(numel, world, c);
          std::vector<double> average(static_cast<size_t>(b.end - b.begin), 0.0);
          for (int r = 0; r < world; ++r) {
            std::vector<double> p;
            for (int64_t i = b.begin; i < b.end; ++i) p.push_back(grads[r][i] + worker_error[r][i]);
            const double scale = reference_scale(p);
            for (int64_t i = b.begin; i < b.end; ++i) {
              const double sent = p[i - b.begin] < 0 ? -scale : scale;
              worker_error[r][i] = p[i - b.begin] - sent;
              average[i - b.begin] += sent / world;
            }
          }
          std::vector<double> compensated;
          for (int64_t i = b.begin; i < b.end; ++i) {
            compensated.push_back(average[i - b.begin] + server_error[i]);
          }
          const double scale = reference_scale(compensated);
          for (int64_t i = b.begin; i < b.end; ++i) {
            const double p = compensated[i - b.begin];
            const double result = p < 0 ? -scale : scale;
            server_error[i] = p - result;
            const float got = exchanged->averaged[0][i];
            // A value within rounding of zero may take either sign; the magnitude must agree.
            const double tolerance = 1e-5 * (1 + scale);
            if (std::fabs(p) < 1e-5) {
              EXPECT_NEAR(std::fabs(got), scale, tolerance);
              server_error[i] = got < 0 ? p + scale : p - scale;  // follow the implementation
            } else {
              ASSERT_NEAR(got, result, tolerance)
                  << "world " << world << " numel " << numel << " step " << step << " index " << i;
            }
          }
        }
      }
    }
  }
}

TEST_P(ScaledSignTest, NonFiniteGradientLeavesTheErrorUnchanged) {
  auto c = make(GetParam(), 2);
  ASSERT_TRUE(c->register_tensor({"w", {64}}).is_ok());
  compress(*c, 0, gaussian(64, 1));
  const std::vector<float> before = exported(*c, key("worker_error"));
  std::vector<float> grad = gaussian(64, 2);
  grad[50] = std::numeric_limits<float>::quiet_NaN();
  std::vector<std::byte> out(c->max_compressed_bytes(0));
  auto used = c->compress(0, {grad.data(), DType::kF32, {64}}, out, {1, 0});
  ASSERT_FALSE(used.is_ok());
  EXPECT_EQ(used.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(exported(*c, key("worker_error")), before);
}

TEST_P(ScaledSignTest, CorruptScaleIsRejected) {
  auto c = make(GetParam(), 1);
  ASSERT_TRUE(c->register_tensor({"w", {16}}).is_ok());
  auto payload = compress(*c, 0, gaussian(16, 3));
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(payload.data(), &nan, 4);
  std::vector<float> accum(16, 0.0f);
  EXPECT_EQ(c->decompress_accumulate(0, payload, {accum.data(), DType::kF32, {16}}).code(),
            StatusCode::kDataLoss);
  std::vector<ConstBytes> chunks = {payload};
  std::vector<std::byte> out(payload.size());
  EXPECT_EQ(c->reduce_chunk(0, 0, chunks, out, {}).code(), StatusCode::kDataLoss);
  for (float v : accum) EXPECT_EQ(v, 0.0f) << "a rejected payload must not be half applied";
}

TEST_P(ScaledSignTest, StateRoundTripAndWorldSizeChange) {
  const int world = 2;
  std::vector<std::unique_ptr<Compressor>> a;
  std::vector<std::unique_ptr<Compressor>> b;
  std::vector<Compressor*> a_ranks;
  std::vector<Compressor*> b_ranks;
  for (int r = 0; r < world; ++r) {
    a.push_back(make(GetParam(), world));
    b.push_back(make(GetParam(), world));
    ASSERT_TRUE(a.back()->register_tensor({"w", {77}}).is_ok());
    ASSERT_TRUE(b.back()->register_tensor({"w", {77}}).is_ok());
    a_ranks.push_back(a.back().get());
    b_ranks.push_back(b.back().get());
  }
  auto grads = [&](int step) {
    std::vector<std::vector<float>> g;
    for (int r = 0; r < world; ++r) g.push_back(gaussian(77, 40 + 10 * step + r));
    return g;
  };
  for (int step = 0; step < 2; ++step) {
    ASSERT_TRUE(testing::serial_exchange(a_ranks, 0, grads(step), {step, 0}).is_ok());
  }
  for (int r = 0; r < world; ++r) {
    StateDict state = a[r]->export_state();
    EXPECT_TRUE(state.contains(key("worker_error")));
    EXPECT_TRUE(state.contains(key("server_error")));
    EXPECT_TRUE(state.contains(key("server_chunk")));
    ASSERT_TRUE(b[r]->import_state(state).is_ok());
  }
  auto from_a = testing::serial_exchange(a_ranks, 0, grads(2), {2, 0});
  auto from_b = testing::serial_exchange(b_ranks, 0, grads(2), {2, 0});
  ASSERT_TRUE(from_a.is_ok() && from_b.is_ok());
  EXPECT_EQ(from_a->averaged, from_b->averaged);

  // Under another world size the worker error is kept and the server error dropped.
  auto single = make(GetParam(), 1);
  ASSERT_TRUE(single->register_tensor({"w", {77}}).is_ok());
  ASSERT_TRUE(single->import_state(a[0]->export_state()).is_ok());
  StateDict restored = single->export_state();
  EXPECT_EQ(exported(*single, key("worker_error")), exported(*a[0], key("worker_error")));
  EXPECT_FALSE(restored.contains(key("server_error")));

  // A wrong shape is rejected and changes nothing.
  StateDict wrong = a[0]->export_state();
  wrong[key("worker_error")].shape = {7, 11};
  const std::vector<float> kept = exported(*b[0], key("worker_error"));
  EXPECT_EQ(b[0]->import_state(wrong).code(), StatusCode::kDataLoss);
  EXPECT_EQ(exported(*b[0], key("worker_error")), kept);
  EXPECT_GT(a[0]->stats().residual_bytes, 77 * 4);
}

INSTANTIATE_TEST_SUITE_P(Sign, ScaledSignTest, ::testing::Values("ef-signsgd", "onebit"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param == "onebit" ? std::string("onebit")
                                                         : std::string("ef_signsgd");
                         });

}  // namespace
}  // namespace frugal
