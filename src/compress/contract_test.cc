// The contract every registered compressor keeps, run over every example spec of the registry:
// payload bounds, determinism, edge-case tensors, the non-finite policy, gather aggregation
// against a serial sum of per-rank decompressions, state round trips and corrupt payloads.
// Families test their own semantics (exactness, unbiasedness) in their own files.
#include <bit>
#include <cmath>
#include <limits>
#include <random>

#include <gtest/gtest.h>

#include "compress/registry.h"
#include "compress/testing/serial_exchange.h"
#include "compress/testing/test_data.h"
#include "core/elementwise.h"

namespace frugal {
namespace {

std::vector<std::string> all_example_specs() {
  std::vector<std::string> specs;
  for (const CompressorEntry& e : compressor_registry()) {
    for (const std::string& s : e.examples) specs.push_back(s);
  }
  return specs;
}

using testing::gaussian;

class ContractTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::unique_ptr<Compressor> make(int world_size = 1, uint64_t seed = 7) {
    CompressorContext context;
    context.world_size = world_size;
    context.seed = seed;
    auto made = make_compressor(GetParam(), context);
    EXPECT_TRUE(made.is_ok()) << made.status().to_string();
    return made.is_ok() ? std::move(made).value() : nullptr;
  }

  // Compresses `grad` as tensor `id`; checks the size contract.
  std::vector<std::byte> compress(Compressor& c, TensorId id, const std::vector<float>& grad,
                                  int64_t step) {
    std::vector<std::byte> out(c.max_compressed_bytes(id) + 64, std::byte{0xAB});
    auto used = c.compress(id, ConstView{grad.data(), DType::kF32, c.tensor(id).shape},
                           MutableBytes(out.data(), c.max_compressed_bytes(id)), {step, 100});
    EXPECT_TRUE(used.is_ok()) << used.status().to_string();
    if (!used.is_ok()) return {};
    EXPECT_LE(*used, c.max_compressed_bytes(id));
    if (c.fixed_size()) {
      EXPECT_EQ(*used, c.max_compressed_bytes(id));
    }
    for (size_t i = c.max_compressed_bytes(id); i < out.size(); ++i) {
      EXPECT_EQ(out[i], std::byte{0xAB}) << "wrote beyond max_compressed_bytes";
    }
    out.resize(*used);
    return out;
  }

  void check_decompress_gathered(int world, const std::vector<Shape>& shapes);
};

const std::vector<Shape> kShapes = {{0}, {1}, {7}, {1031}, {64, 33}, {8, 5, 3, 3}, {256, 400}};

TEST_P(ContractTest, SpecIsCanonicalAndRebuilds) {
  auto c = make();
  ASSERT_NE(c, nullptr);
  auto again = make_compressor(c->spec(), {});
  ASSERT_TRUE(again.is_ok()) << c->spec() << ": " << again.status().to_string();
  EXPECT_EQ(again.value()->spec(), c->spec());
}

TEST_P(ContractTest, PayloadWithinBoundAndDeterministic) {
  auto a = make();
  auto b = make();
  ASSERT_NE(a, nullptr);
  for (size_t s = 0; s < kShapes.size(); ++s) {
    const std::string name = "t" + std::to_string(s);
    ASSERT_TRUE(a->register_tensor({name, kShapes[s]}).is_ok());
    ASSERT_TRUE(b->register_tensor({name, kShapes[s]}).is_ok());
  }
  for (int64_t step = 0; step < 3; ++step) {
    for (TensorId id = 0; id < a->num_tensors(); ++id) {
      auto grad = gaussian(shape_numel(kShapes[id]), static_cast<uint32_t>(step * 10 + id));
      EXPECT_EQ(compress(*a, id, grad, step), compress(*b, id, grad, step))
          << "tensor " << a->tensor(id).name << " step " << step;
    }
  }
}

TEST_P(ContractTest, ZerosDecodeToFiniteValues) {
  auto c = make();
  ASSERT_NE(c, nullptr);
  for (size_t s = 0; s < kShapes.size(); ++s) {
    TensorId id = c->register_tensor({"t" + std::to_string(s), kShapes[s]}).value();
    std::vector<float> zeros(static_cast<size_t>(shape_numel(kShapes[s])), 0.0f);
    auto payload = compress(*c, id, zeros, 0);
    if (c->aggregation() != Aggregation::kGather) continue;  // needs the protocol; see below
    std::vector<float> accum(zeros.size(), 0.0f);
    ASSERT_TRUE(
        c->decompress_accumulate(id, payload, {accum.data(), DType::kF32, kShapes[s]}).is_ok());
    for (float v : accum) EXPECT_TRUE(std::isfinite(v));
  }
}

TEST_P(ContractTest, NonFiniteGradientIsAnError) {
  auto c = make();
  ASSERT_NE(c, nullptr);
  TensorId id = c->register_tensor({"w", {64, 32}}).value();
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    std::vector<float> grad(64 * 32, bad);
    std::vector<std::byte> out(c->max_compressed_bytes(id));
    auto used = c->compress(id, {grad.data(), DType::kF32, {64, 32}}, out, {0, 0});
    ASSERT_FALSE(used.is_ok()) << "value " << bad;
    EXPECT_EQ(used.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(used.status().message().find("'w'"), std::string::npos) << used.status().message();
  }
}

TEST_P(ContractTest, WrongViewsAreRejected) {
  auto c = make();
  ASSERT_NE(c, nullptr);
  TensorId id = c->register_tensor({"w", {10, 10}}).value();
  EXPECT_FALSE(c->register_tensor({"w", {10, 10}}).is_ok()) << "duplicate name accepted";
  std::vector<float> grad(99, 1.0f);
  std::vector<std::byte> out(c->max_compressed_bytes(id) + 1000);
  EXPECT_FALSE(c->compress(id, {grad.data(), DType::kF32, {99}}, out, {}).is_ok());
  EXPECT_FALSE(c->compress(id, {grad.data(), DType::kF16, {10, 10}}, out, {}).is_ok());
}

TEST_P(ContractTest, TruncatedPayloadIsRejected) {
  auto c = make();
  ASSERT_NE(c, nullptr);
  if (c->aggregation() != Aggregation::kGather) GTEST_SKIP() << "payload is reduced first";
  TensorId id = c->register_tensor({"w", {40, 50}}).value();
  auto payload = compress(*c, id, gaussian(2000, 3), 0);
  ASSERT_FALSE(payload.empty());
  std::vector<float> accum(2000, 0.0f);
  payload.pop_back();
  EXPECT_EQ(c->decompress_accumulate(id, payload, {accum.data(), DType::kF32, {40, 50}}).code(),
            StatusCode::kDataLoss);
}

// decompress_gathered (one pass in the sparse and ADTopk overrides) against its definition: zero,
// decompress_accumulate of each rank's payload in rank order, divide. Bit for bit, for world
// sizes 1 to 4 (powers of two divide by multiplying), shapes spanning several of the sparse
// pass's 4096-element blocks, a 4-D (strided ADTopk slices) and a 1-D tensor. A truncated payload
// among them is DataLoss.
void ContractTest::check_decompress_gathered(int world, const std::vector<Shape>& shapes) {
  std::vector<std::unique_ptr<Compressor>> ranks;
  for (int r = 0; r < world; ++r) {
    ranks.push_back(make(world));
    ASSERT_NE(ranks.back(), nullptr);
    for (size_t t = 0; t < shapes.size(); ++t) {
      ASSERT_TRUE(ranks.back()->register_tensor({"t" + std::to_string(t), shapes[t]}).is_ok());
    }
  }
  if (ranks[0]->aggregation() != Aggregation::kGather) GTEST_SKIP() << "not a gather kind";
  for (size_t t = 0; t < shapes.size(); ++t) {
    const auto id = static_cast<TensorId>(t);
    const int64_t numel = shape_numel(shapes[t]);
    std::vector<std::vector<std::byte>> payloads;
    for (int r = 0; r < world; ++r) {
      payloads.push_back(compress(*ranks[r], id, gaussian(numel, 70 + 10 * r + t), 0));
    }
    std::vector<float> expected(static_cast<size_t>(numel), 0.0f);
    for (const auto& payload : payloads) {
      ASSERT_TRUE(
          ranks[0]
              ->decompress_accumulate(id, payload, {expected.data(), DType::kF32, shapes[t]})
              .is_ok());
    }
    for (float& v : expected) v /= static_cast<float>(world);
    std::vector<float> got(static_cast<size_t>(numel), 123.0f);  // overwritten, not added to
    const std::vector<ConstBytes> views(payloads.begin(), payloads.end());
    Status status = ranks[0]->decompress_gathered(id, views, {got.data(), DType::kF32, shapes[t]},
                                                  static_cast<float>(world));
    ASSERT_TRUE(status.is_ok()) << status.to_string();
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(expected[i]))
          << "world " << world << " shape " << shape_to_string(shapes[t]) << " [" << i << "]";
    }
    std::vector<std::byte> truncated = payloads.back();
    truncated.pop_back();
    std::vector<ConstBytes> bad = views;
    bad.back() = truncated;
    EXPECT_EQ(ranks[0]
                  ->decompress_gathered(id, bad, {got.data(), DType::kF32, shapes[t]},
                                        static_cast<float>(world))
                  .code(),
              StatusCode::kDataLoss);
  }
}

TEST_P(ContractTest, DecompressGatheredEqualsZeroAccumulateDivide) {
  for (int world = 1; world <= 4; ++world) {
    check_decompress_gathered(world, {{48, 40}, {100, 130}, {8, 6, 3, 3}, {5}});
  }
}

// Targets of kStreamingResultBytes and more are built in scratch and streamed out: the same bits.
// 1030-float rows put every row at a different 16-byte alignment (the streaming loop's head).
TEST_P(ContractTest, DecompressGatheredStreamsLargeTargetsBitForBit) {
  const int64_t rows = static_cast<int64_t>(kStreamingResultBytes / (1030 * sizeof(float))) + 1;
  for (int world : {3, 4}) check_decompress_gathered(world, {{rows, 1030}});
}

TEST_P(ContractTest, GatherEqualsSerialSumOfDecompressions) {
  for (int world = 1; world <= 4; ++world) {
    std::vector<std::unique_ptr<Compressor>> owned;
    std::vector<std::unique_ptr<Compressor>> references;
    std::vector<Compressor*> ranks;
    for (int r = 0; r < world; ++r) {
      owned.push_back(make(world));
      references.push_back(make(world));
      ASSERT_NE(owned.back(), nullptr);
      ASSERT_TRUE(owned.back()->register_tensor({"w", {48, 40}}).is_ok());
      ASSERT_TRUE(references.back()->register_tensor({"w", {48, 40}}).is_ok());
      ranks.push_back(owned.back().get());
    }
    if (owned[0]->aggregation() != Aggregation::kGather) GTEST_SKIP() << "not a gather kind";
    std::vector<std::vector<float>> grads;
    for (int r = 0; r < world; ++r) grads.push_back(gaussian(48 * 40, 50 + r));
    auto exchanged = testing::serial_exchange(ranks, 0, grads, {0, 0});
    ASSERT_TRUE(exchanged.is_ok()) << exchanged.status().to_string();
    // Independent reference: each rank's payload decompressed alone, summed serially.
    std::vector<float> expected(48 * 40, 0.0f);
    for (int r = 0; r < world; ++r) {
      auto payload = compress(*references[r], 0, grads[r], 0);
      std::vector<float> alone(48 * 40, 0.0f);
      ASSERT_TRUE(references[r]
                      ->decompress_accumulate(0, payload, {alone.data(), DType::kF32, {48, 40}})
                      .is_ok());
      for (size_t i = 0; i < alone.size(); ++i) expected[i] += alone[i];
    }
    for (float& v : expected) v /= static_cast<float>(world);
    for (int r = 0; r < world; ++r) {
      ASSERT_EQ(exchanged->averaged[r].size(), expected.size());
      for (size_t i = 0; i < expected.size(); ++i) {
        ASSERT_FLOAT_EQ(exchanged->averaged[r][i], expected[i]) << "rank " << r << " index " << i;
      }
    }
  }
}

TEST_P(ContractTest, ExchangeRunsOnEveryRankCount) {
  for (int world = 1; world <= 4; ++world) {
    std::vector<std::unique_ptr<Compressor>> owned;
    std::vector<Compressor*> ranks;
    for (int r = 0; r < world; ++r) {
      owned.push_back(make(world));
      ASSERT_NE(owned.back(), nullptr);
      ASSERT_TRUE(owned.back()->register_tensor({"w", {33, 20}}).is_ok());
      ASSERT_TRUE(owned.back()->register_tensor({"b", {5}}).is_ok());
      ranks.push_back(owned.back().get());
    }
    for (TensorId id : {0, 1}) {
      std::vector<std::vector<float>> grads;
      for (int r = 0; r < world; ++r) grads.push_back(gaussian(id == 0 ? 660 : 5, 90 + r));
      for (int64_t step = 0; step < 2; ++step) {
        auto exchanged = testing::serial_exchange(ranks, id, grads, {step, 0});
        ASSERT_TRUE(exchanged.is_ok()) << exchanged.status().to_string();
        for (int r = 1; r < world; ++r) {
          EXPECT_EQ(exchanged->averaged[r], exchanged->averaged[0]) << "ranks disagree";
        }
        for (float v : exchanged->averaged[0]) ASSERT_TRUE(std::isfinite(v));
      }
    }
  }
}

TEST_P(ContractTest, ExportedStateRestoresTheSameBehaviour) {
  auto a = make();
  auto b = make();
  ASSERT_NE(a, nullptr);
  for (Compressor* c : {a.get(), b.get()}) {
    ASSERT_TRUE(c->register_tensor({"w", {64, 50}}).is_ok());
    ASSERT_TRUE(c->register_tensor({"v", {300}}).is_ok());
  }
  for (int64_t step = 0; step < 2; ++step) {
    compress(*a, 0, gaussian(3200, 11 + step), step);
    compress(*a, 1, gaussian(300, 21 + step), step);
  }
  ASSERT_TRUE(b->import_state(a->export_state()).is_ok());
  EXPECT_EQ(compress(*a, 0, gaussian(3200, 99), 2), compress(*b, 0, gaussian(3200, 99), 2));
  EXPECT_EQ(compress(*a, 1, gaussian(300, 98), 2), compress(*b, 1, gaussian(300, 98), 2));
}

INSTANTIATE_TEST_SUITE_P(Registry, ContractTest, ::testing::ValuesIn(all_example_specs()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name;
                           for (char ch : info.param) {
                             name += std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
                           }
                           return name;
                         });

// memoryless_warning against behaviour: a constant gradient g for T steps. A compressor that
// keeps what it does not send (or loses nothing) delivers about T g in all; one that drops it
// delivers T C(g), off by T ||g - C(g)||. The warning must fire exactly for the second kind.
TEST_P(ContractTest, WarnsOfLostMassExactlyWhenAConstantGradientIsNotDeliveredInFull) {
  const std::string spec = GetParam();
  if (spec.starts_with("momentum(")) {
    GTEST_SKIP() << "momentum correction sends the momentum-accumulated u (about g / (1 - m)): "
                    "it replaces the optimizer's momentum, so its sum is not T g by design";
  }
  if (spec == "signsgd") GTEST_SKIP() << "a sign vote is an update direction, not an estimate";
  auto c = make();
  ASSERT_NE(c, nullptr);
  const Shape shape = {32, 64};
  TensorId id = c->register_tensor({"w", shape}).value();
  // Scale 0.25: threshold:value=0.5 then drops all but the 4.6% beyond 2 sigma.
  const std::vector<float> g = gaussian(32 * 64, 11, 0.25f);
  constexpr int kSteps = 2000;
  std::vector<double> delivered(g.size(), 0.0);
  Compressor* ranks[] = {c.get()};
  for (int step = 0; step < kSteps; ++step) {
    auto exchanged = testing::serial_exchange(ranks, id, {g}, {step, kSteps});
    ASSERT_TRUE(exchanged.is_ok()) << exchanged.status().to_string();
    for (size_t i = 0; i < g.size(); ++i) delivered[i] += exchanged->averaged[0][i];
  }
  double error = 0, norm = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    error += std::pow(delivered[i] - kSteps * double{g[i]}, 2);
    norm += std::pow(kSteps * double{g[i]}, 2);
  }
  const double relative = std::sqrt(error / norm);
  const bool warned = !memoryless_warning(spec).empty();
  std::printf("%-60s relative shortfall %.4f, warned %d\n", spec.c_str(), relative, warned);
  EXPECT_EQ(warned, relative > 0.3) << spec << ": relative shortfall " << relative;
}

TEST(RegistryTest, MemorylessWarningNamesTheSpecAndTheFix) {
  const std::string warning = memoryless_warning("fp16(adtopk:density=0.01)");
  EXPECT_NE(warning.find("'fp16(adtopk:density=0.01)' keeps no error feedback"), std::string::npos)
      << warning;
  EXPECT_NE(warning.find("ef(fp16(adtopk:density=0.01))"), std::string::npos) << warning;
  EXPECT_EQ(warning.find('\n'), std::string::npos) << "one line";
  EXPECT_EQ(memoryless_warning("resireduce(ef(topk:density=0.01))"), "");
  EXPECT_EQ(memoryless_warning("momentum(topk:density=0.01)"), "") << "accumulates v += u";
  EXPECT_EQ(memoryless_warning("topk:density=1"), "") << "sends everything";
  EXPECT_EQ(memoryless_warning("topk:density=("), "") << "invalid specs fail elsewhere";
}

// Every parameter named density rejects values outside (0, 1].
TEST(RegistryTest, DensityOutOfRangeIsRejected) {
  for (const CompressorEntry& e : compressor_registry()) {
    bool has_density = false;
    for (const ParamDoc& p : e.params) has_density |= p.key == "density";
    if (!has_density) continue;
    for (const char* bad : {"0", "-0.1", "1.5", "abc"}) {
      const std::string spec = e.name + ":density=" + bad;
      auto made = make_compressor(e.inner == InnerSpec::kNone ? spec : e.examples.front(), {});
      if (e.inner != InnerSpec::kNone) continue;
      ASSERT_FALSE(made.is_ok()) << spec;
      EXPECT_NE(made.status().message().find("density"), std::string::npos);
    }
  }
}

TEST(RegistryTest, UnknownNamesAndKeysListWhatIsValid) {
  auto unknown = make_compressor("topkk:density=0.01", {});
  ASSERT_FALSE(unknown.is_ok());
  EXPECT_NE(unknown.status().message().find("valid: none, fp16"), std::string::npos)
      << unknown.status().message();
  auto key = make_compressor("none:density=0.1", {});
  ASSERT_FALSE(key.is_ok());
  EXPECT_NE(key.status().message().find("no parameter 'density'"), std::string::npos);
  EXPECT_FALSE(make_compressor("none(none)", {}).is_ok());
  EXPECT_FALSE(make_compressor("fp16(none)", {}).is_ok());
}

}  // namespace
}  // namespace frugal
