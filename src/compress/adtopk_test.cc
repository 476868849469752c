// ADTopk's own semantics against independent references: every slice's selection is the k largest
// magnitudes of a sorted copy (ties to the lower index), the payload layout and size follow the
// documented formula, corrupt payloads are rejected, and the interleaving policy follows a
// brute-force simulation of its schedule. The generic contract runs in contract_test.cc.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <optional>
#include <random>

#include <gtest/gtest.h>

#include "compress/adtopk_kernels.h"
#include "compress/registry.h"
#include "compress/testing/compressors.h"
#include "compress/testing/test_data.h"
#include "core/thread_pool.h"

namespace frugal {
namespace {

std::unique_ptr<Compressor> make(const std::string& spec) { return testing::make_or_fail(spec); }

// Values from a small set of magnitudes with random signs, so that ties are everywhere.
std::vector<float> tied_values(int64_t n, uint32_t seed, int distinct = 7) {
  std::mt19937 engine(seed);
  std::uniform_int_distribution<int> level(0, distinct - 1);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = static_cast<float>(level(engine) + 1) * ((engine() & 1) ? 0.25f : -0.25f);
  return v;
}

using testing::gaussian;

// Magnitudes a few ulps apart (consecutive bit patterns, random signs): every bit of a radix
// select on the bit patterns decides something.
std::vector<float> adjacent_values(int64_t n, uint32_t seed, int distinct) {
  std::mt19937 engine(seed);
  std::uniform_int_distribution<uint32_t> level(0, static_cast<uint32_t>(distinct - 1));
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) {
    const uint32_t bits = 0x3F800000u + level(engine) + ((engine() & 1) ? 0x80000000u : 0u);
    std::memcpy(&x, &bits, 4);
  }
  return v;
}

// The reference: indices (ascending) of the k largest |x| of `values`, ties to the lower index,
// from a sorted copy.
std::vector<int64_t> reference_top(const std::vector<float>& values, int64_t k) {
  std::vector<int64_t> order(values.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return std::fabs(values[a]) > std::fabs(values[b]);
  });
  order.resize(static_cast<size_t>(k));
  std::sort(order.begin(), order.end());
  return order;
}

std::vector<std::byte> compress(Compressor& c, TensorId id, const std::vector<float>& grad,
                                StepInfo step = {}) {
  std::vector<std::byte> out(c.max_compressed_bytes(id));
  auto used = c.compress(id, {grad.data(), DType::kF32, c.tensor(id).shape}, out, step);
  EXPECT_TRUE(used.is_ok()) << used.status().to_string();
  out.resize(used.is_ok() ? *used : 0);
  return out;
}

template <typename T>
T load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

struct SliceGeometry {
  int64_t d0, d1, inner, k;
};

SliceGeometry geometry(const Shape& shape, double density) {
  SliceGeometry g{shape[0], shape[1], 1, 0};
  for (size_t i = 2; i < shape.size(); ++i) g.inner *= shape[i];
  g.k = std::min<int64_t>(g.d1, std::max<int64_t>(1, static_cast<int64_t>(density * g.d1)));
  return g;
}

// Decodes the documented fixed layout on its own: [S*k f32 values][S*k indices].
void expect_fixed_payload_selects_reference(const std::vector<std::byte>& payload,
                                            const std::vector<float>& x, const Shape& shape,
                                            double density) {
  const SliceGeometry g = geometry(shape, density);
  const int64_t slices = g.d0 * g.inner;
  const size_t index_bytes = g.d1 < 65536 ? 2 : 4;
  ASSERT_EQ(payload.size(), static_cast<size_t>(slices * g.k) * (4 + index_bytes));
  const std::byte* values = payload.data();
  const std::byte* indices = values + 4 * slices * g.k;
  for (int64_t i0 = 0; i0 < g.d0; ++i0) {
    for (int64_t j = 0; j < g.inner; ++j) {
      std::vector<float> slice(static_cast<size_t>(g.d1));
      for (int64_t c = 0; c < g.d1; ++c) slice[c] = x[(i0 * g.d1 + c) * g.inner + j];
      const std::vector<int64_t> expected = reference_top(slice, g.k);
      const int64_t s = i0 * g.inner + j;
      for (int64_t e = 0; e < g.k; ++e) {
        const int64_t position = s * g.k + e;
        const int64_t index = index_bytes == 2
                                  ? load<uint16_t>(indices + 2 * position)
                                  : static_cast<int64_t>(load<uint32_t>(indices + 4 * position));
        ASSERT_EQ(index, expected[e]) << shape_to_string(shape) << " slice " << s << " entry " << e;
        ASSERT_EQ(load<float>(values + 4 * position), slice[index]);
      }
    }
  }
}

TEST(AdtopkTest, EverySliceSelectsTheLargestMagnitudesWithTies) {
  const std::vector<Shape> shapes = {{5, 1},       {7, 3},        {9, 64},        {4, 1000},
                                     {3, 3, 5},    {2, 64, 7},    {3, 1000, 2},   {4, 1, 3, 3},
                                     {3, 3, 2, 2}, {6, 64, 3, 3}, {2, 1000, 1, 3}};
  uint32_t seed = 1;
  for (double density : {0.01, 0.1, 0.3, 0.5}) {
    const std::string spec = "adtopk:density=" + format_param(density);
    for (const Shape& shape : shapes) {
      auto c = make(spec);
      TensorId id = c->register_tensor({"w", shape}).value();
      for (int distinct : {1, 3, 50}) {
        const auto x = tied_values(shape_numel(shape), seed++, distinct);
        expect_fixed_payload_selects_reference(compress(*c, id, x), x, shape, density);
      }
      const auto x = gaussian(shape_numel(shape), seed++);
      expect_fixed_payload_selects_reference(compress(*c, id, x), x, shape, density);
    }
  }
}

TEST(AdtopkTest, LargeMatrixMatchesReferenceAcrossRowsOfDifferentScales) {
  // Rows whose scale jumps exercise the kernel's guessed bound and its retries.
  const Shape shape = {64, 2048};
  std::vector<float> x = gaussian(64 * 2048, 5);
  for (int64_t r = 0; r < 64; ++r) {
    const float scale = r % 7 == 3 ? 100.0f : (r % 5 == 1 ? 0.0f : 1.0f + 0.3f * (r % 4));
    for (int64_t c = 0; c < 2048; ++c) x[r * 2048 + c] *= scale;
  }
  for (double density : {0.001, 0.01, 0.2}) {
    auto c = make("adtopk:density=" + format_param(density));
    TensorId id = c->register_tensor({"w", shape}).value();
    expect_fixed_payload_selects_reference(compress(*c, id, x), x, shape, density);
  }
}

TEST(AdtopkTest, RowScalesChangingBetweenStepsStillSelectTheReference) {
  // Each row's last k-th magnitude seeds its next selection: rows that grow 100x, shrink 100x,
  // go all-zero or come back from zero between steps must still select exactly.
  const Shape shape = {48, 512};
  for (double density : {0.01, 0.1}) {
    auto c = make("adtopk:density=" + format_param(density));
    TensorId id = c->register_tensor({"w", shape}).value();
    for (int step = 0; step < 6; ++step) {
      std::vector<float> x = gaussian(48 * 512, 40 + static_cast<uint32_t>(step));
      for (int64_t r = 0; r < 48; ++r) {
        const int phase = static_cast<int>((r + step) % 4);
        const float scale = phase == 0 ? 100.0f : (phase == 1 ? 0.01f : (phase == 2 ? 0.0f : 1.0f));
        for (int64_t col = 0; col < 512; ++col) x[r * 512 + col] *= scale;
      }
      expect_fixed_payload_selects_reference(compress(*c, id, x), x, shape, density);
    }
  }
}

void expect_kernel_matches_sorted_reference() {
  std::mt19937 engine(9);
  uint32_t chained = 0;  // carried from call to call, as rows of one tensor do
  for (int trial = 0; trial < 400; ++trial) {
    // Runs up to 8192 take the two-pass selection, longer ones the hinted single pass.
    const size_t n = 1 + engine() % (trial % 4 == 1 ? 30000 : 3000);
    const size_t k = 1 + engine() % (trial % 3 == 0 ? n : std::max<size_t>(1, n / 20));
    const auto x = trial % 5 == 2   ? adjacent_values(static_cast<int64_t>(n), trial, 2 + trial % 7)
                   : trial % 2 == 0 ? tied_values(static_cast<int64_t>(n), trial, 1 + trial % 9)
                                    : gaussian(static_cast<int64_t>(n), trial);
    const auto expected = reference_top(x, static_cast<int64_t>(k));
    // A hint far too high forces the retries; a zero hint admits everything first.
    for (float hint_value : {0.0f, 1e30f, 0.3f}) {
      uint32_t hint;
      std::memcpy(&hint, &hint_value, 4);
      std::vector<uint32_t> out(k);
      adtopk_detail::select_top_magnitudes(reinterpret_cast<const uint32_t*>(x.data()), n, k,
                                           out.data(), &hint);
      ASSERT_TRUE(std::equal(out.begin(), out.end(), expected.begin()))
          << "n " << n << " k " << k << " hint " << hint_value;
    }
    std::vector<uint32_t> out(k);
    adtopk_detail::select_top_magnitudes(reinterpret_cast<const uint32_t*>(x.data()), n, k,
                                         out.data(), &chained);
    ASSERT_TRUE(std::equal(out.begin(), out.end(), expected.begin())) << "n " << n << " k " << k;
  }
}

TEST(AdtopkTest, KernelMatchesSortedReference) {
  // Every instruction set's kernels on this CPU: AVX-512 (where present), AVX2 and the baseline.
  for (auto isa : {adtopk_detail::KernelIsa::kByCpu, adtopk_detail::KernelIsa::kAvx2,
                   adtopk_detail::KernelIsa::kBaseline}) {
    adtopk_detail::force_kernels_for_testing(isa);
    SCOPED_TRACE("isa " + std::to_string(static_cast<int>(isa)));
    expect_kernel_matches_sorted_reference();
  }
  adtopk_detail::force_kernels_for_testing(adtopk_detail::KernelIsa::kByCpu);
}

TEST(AdtopkTest, KernelMatchesSortedReferenceOnChainsOfTiedRows) {
  // Short tied rows with the hint carried along often leave exactly k candidates above the guess.
  for (int trial = 0; trial < 300; ++trial) {
    const auto x = tied_values(9 * 64, 1000 + trial, 1 + trial % 50);
    uint32_t hint = 0;
    for (int r = 0; r < 9; ++r) {
      const std::vector<float> row(x.begin() + 64 * r, x.begin() + 64 * (r + 1));
      std::vector<uint32_t> out(6);
      adtopk_detail::select_top_magnitudes(reinterpret_cast<const uint32_t*>(row.data()), 64, 6,
                                           out.data(), &hint);
      const auto expected = reference_top(row, 6);
      ASSERT_TRUE(std::equal(out.begin(), out.end(), expected.begin()))
          << "trial " << trial << " row " << r;
    }
  }
}

TEST(AdtopkTest, DensityOneReproducesTheInputExactly) {
  for (const std::string spec : {"adtopk:density=1", "adtopk:density=1,interleave=true"}) {
    for (const Shape& shape : std::vector<Shape>{{17, 33}, {4, 5, 3, 3}, {100}, {1, 1}}) {
      auto c = make(spec);
      TensorId id = c->register_tensor({"w", shape}).value();
      for (int64_t step = 0; step < 4; ++step) {  // both interleaved paths
        const auto x = gaussian(shape_numel(shape), 3 + step);
        const auto payload = compress(*c, id, x, {step, 0});
        std::vector<float> accum(x.size(), 0.0f);
        ASSERT_TRUE(
            c->decompress_accumulate(id, payload, {accum.data(), DType::kF32, shape}).is_ok());
        EXPECT_EQ(accum, x) << spec << " " << shape_to_string(shape) << " step " << step;
      }
    }
  }
}

TEST(AdtopkTest, OneDimensionalTensorsAreSentDense) {
  auto c = make("adtopk:density=0.01");
  TensorId id = c->register_tensor({"bias", {300}}).value();
  EXPECT_EQ(c->max_compressed_bytes(id), 300u * 4);
  const auto x = gaussian(300, 4);
  const auto payload = compress(*c, id, x);
  ASSERT_EQ(payload.size(), 300u * 4);
  std::vector<float> accum(300, 1.0f);
  ASSERT_TRUE(c->decompress_accumulate(id, payload, {accum.data(), DType::kF32, {300}}).is_ok());
  for (size_t i = 0; i < 300; ++i) EXPECT_EQ(accum[i], 1.0f + x[i]);

  auto half = make("fp16(adtopk:density=0.01)");
  id = half->register_tensor({"bias", {300}}).value();
  EXPECT_EQ(half->max_compressed_bytes(id), 300u * 2);
}

TEST(AdtopkTest, PayloadSizeFollowsTheFormula) {
  struct Case {
    std::string spec;
    Shape shape;
    size_t bytes;
  };
  const std::vector<Case> cases = {
      {"adtopk:density=0.01", {2048, 2048}, 2048 * 20 * (4 + 2)},
      {"fp16(adtopk:density=0.01)", {2048, 2048}, 2048 * 20 * (2 + 2)},
      {"bf16(adtopk:density=0.01)", {2048, 2048}, 2048 * 20 * (2 + 2)},
      {"adtopk:density=0.01", {64, 64, 3, 3}, 64 * 9 * 1 * (4 + 2)},  // k = max(1, 0)
      {"adtopk:density=0.1", {8, 768, 2}, 8 * 2 * 76 * (4 + 2)},
      {"adtopk:density=0.5", {3, 7}, 3 * 3 * (4 + 2)},
      {"adtopk:density=0.01", {0, 5}, 0},
      {"adtopk:density=0.01", {5, 0}, 0},
      {"adtopk:density=0.01", {0}, 0},
  };
  for (const Case& t : cases) {
    auto c = make(t.spec);
    TensorId id = c->register_tensor({"w", t.shape}).value();
    EXPECT_TRUE(c->fixed_size());
    EXPECT_EQ(c->aggregation(), Aggregation::kGather);
    EXPECT_EQ(c->max_compressed_bytes(id), t.bytes) << t.spec << " " << shape_to_string(t.shape);
    const auto payload = compress(*c, id, gaussian(shape_numel(t.shape), 2));
    EXPECT_EQ(payload.size(), t.bytes) << t.spec << " " << shape_to_string(t.shape);
  }
}

TEST(AdtopkTest, IndexWidthIsU16BelowSixtyFiveThousandFiveHundredThirtySix) {
  for (int64_t d1 : {65535, 65536}) {
    const Shape shape = {2, d1};
    auto c = make("adtopk:density=0.0001");
    TensorId id = c->register_tensor({"w", shape}).value();
    const size_t index_bytes = d1 < 65536 ? 2 : 4;
    const int64_t k = static_cast<int64_t>(0.0001 * d1);
    EXPECT_EQ(c->max_compressed_bytes(id), static_cast<size_t>(2 * k) * (4 + index_bytes));
    auto x = gaussian(2 * d1, 6, 0.01f);
    x[d1 - 1] = 50.0f;  // the last index of slice 0 must survive the width
    x[2 * d1 - 1] = -60.0f;
    const auto payload = compress(*c, id, x);
    expect_fixed_payload_selects_reference(payload, x, shape, 0.0001);
    std::vector<float> accum(x.size(), 0.0f);
    ASSERT_TRUE(c->decompress_accumulate(id, payload, {accum.data(), DType::kF32, shape}).is_ok());
    EXPECT_EQ(accum[d1 - 1], 50.0f);
    EXPECT_EQ(accum[2 * d1 - 1], -60.0f);
  }
}

TEST(AdtopkTest, HalfPrecisionValuesRoundTripThroughTheWire) {
  const Shape shape = {16, 50};
  const auto x = gaussian(800, 12);
  for (const std::string spec : {"fp16(adtopk:density=0.1)", "bf16(adtopk:density=0.1)"}) {
    auto c = make(spec);
    EXPECT_EQ(c->spec(),
              spec.substr(0, 5) + "adtopk:density=0.1,interleave=false,warmup=15,tau=5)");
    TensorId id = c->register_tensor({"w", shape}).value();
    const auto payload = compress(*c, id, x);
    std::vector<float> accum(800, 0.0f);
    ASSERT_TRUE(c->decompress_accumulate(id, payload, {accum.data(), DType::kF32, shape}).is_ok());
    for (int64_t r = 0; r < 16; ++r) {
      std::vector<float> row(x.begin() + r * 50, x.begin() + (r + 1) * 50);
      const auto top = reference_top(row, 5);
      for (int64_t index : top) {
        const float sent = accum[r * 50 + index];
        const float expected = spec[0] == 'f' ? f16_to_f32(f32_to_f16(row[index]))
                                              : bf16_to_f32(f32_to_bf16(row[index]));
        EXPECT_EQ(sent, expected);
      }
    }
  }
}

TEST(AdtopkTest, CorruptPayloadsAreRejectedAndChangeNothing) {
  const Shape shape = {4, 10};
  auto c = make("adtopk:density=0.3");  // k = 3, u16 indices after 12 f32 values
  TensorId id = c->register_tensor({"w", shape}).value();
  const auto good = compress(*c, id, gaussian(40, 1));
  ASSERT_EQ(good.size(), 12u * 6);
  auto set_index = [&](std::vector<std::byte> p, int position, uint16_t index) {
    std::memcpy(p.data() + 48 + 2 * position, &index, 2);
    return p;
  };
  const uint16_t first = load<uint16_t>(good.data() + 48);
  const std::vector<std::vector<std::byte>> bad = {
      set_index(good, 4, 10),  // beyond axis 1
      set_index(good, 11, 65535),
      set_index(good, 1, first),  // not ascending (repeats the previous)
      std::vector<std::byte>(good.begin(), good.end() - 1),
      [&] {
        auto p = good;
        p.push_back(std::byte{0});
        return p;
      }(),
      {},
  };
  for (const auto& payload : bad) {
    std::vector<float> accum(40, 2.0f);
    Status s = c->decompress_accumulate(id, payload, {accum.data(), DType::kF32, shape});
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.to_string();
    EXPECT_NE(s.message().find("'w'"), std::string::npos) << s.message();
    EXPECT_EQ(accum, std::vector<float>(40, 2.0f));
  }
}

TEST(AdtopkTest, InterleavedPayloadsCarryATagAndBadTagsAreRejected) {
  auto c = make("adtopk:density=0.1,interleave=true");
  EXPECT_FALSE(c->fixed_size());
  TensorId id = c->register_tensor({"w", {10, 20}}).value();
  const auto payload = compress(*c, id, gaussian(200, 1), {0, 0});
  ASSERT_FALSE(payload.empty());
  EXPECT_EQ(payload[0], std::byte{1});  // the first call is traditional: sparse
  for (uint8_t tag : {3, 255}) {
    auto bad = payload;
    bad[0] = std::byte{tag};
    std::vector<float> accum(200, 0.0f);
    EXPECT_EQ(c->decompress_accumulate(id, bad, {accum.data(), DType::kF32, {10, 20}}).code(),
              StatusCode::kDataLoss);
  }
  auto unsorted = payload;  // swap the first two sparse indices
  std::swap_ranges(unsorted.begin() + 5, unsorted.begin() + 9, unsorted.begin() + 9);
  std::vector<float> accum(200, 0.0f);
  EXPECT_EQ(c->decompress_accumulate(id, unsorted, {accum.data(), DType::kF32, {10, 20}}).code(),
            StatusCode::kDataLoss);
}

TEST(AdtopkTest, SubtractOwnPayloadRemovesWhatWasSent) {
  for (const std::string spec :
       {"adtopk:density=0.1", "fp16(adtopk:density=0.2,interleave=true)"}) {
    auto c = make(spec);
    const Shape shape = {12, 30, 2};
    TensorId id = c->register_tensor({"w", shape}).value();
    for (int64_t step = 0; step < 3; ++step) {
      const auto x = gaussian(720, 40 + step);
      const auto payload = compress(*c, id, x, {step, 0});
      std::vector<float> sent(720, 0.0f);
      ASSERT_TRUE(c->decompress_accumulate(id, payload, {sent.data(), DType::kF32, shape}).is_ok());
      auto target = x;
      ASSERT_TRUE(
          c->subtract_own_payload(id, payload, {target.data(), DType::kF32, shape}).is_ok());
      for (size_t i = 0; i < 720; ++i) EXPECT_EQ(target[i], x[i] - sent[i]);
    }
  }
}

TEST(AdtopkTest, NonFiniteValueInOneSliceIsAnError) {
  for (const std::string spec : {"adtopk:density=0.01", "adtopk:density=0.01,interleave=true"}) {
    auto c = make(spec);
    TensorId id = c->register_tensor({"conv", {4, 64, 3, 3}}).value();
    for (int64_t step = 0; step < 4; ++step) {
      auto x = gaussian(4 * 64 * 9, 8);
      x[2 * 64 * 9 + 17 * 9 + 4] = step % 2 == 0 ? std::numeric_limits<float>::quiet_NaN()
                                                 : -std::numeric_limits<float>::infinity();
      std::vector<std::byte> out(c->max_compressed_bytes(id));
      auto used = c->compress(id, {x.data(), DType::kF32, {4, 64, 3, 3}}, out, {step, 0});
      ASSERT_FALSE(used.is_ok()) << spec << " step " << step;
      EXPECT_EQ(used.status().code(), StatusCode::kInvalidArgument);
    }
  }
}

TEST(AdtopkTest, SpecIsCanonicalAndParametersAreValidated) {
  auto c = make("adtopk");
  EXPECT_EQ(c->spec(), "adtopk:density=0.01,interleave=false,warmup=15,tau=5");
  c = make("adtopk:tau=7,interleave=1,density=0.05");
  EXPECT_EQ(c->spec(), "adtopk:density=0.05,interleave=true,warmup=15,tau=7");
  for (const char* bad : {"adtopk:tau=0", "adtopk:warmup=-1", "adtopk:interleave=maybe",
                          "adtopk:density=0", "adtopk:threshold=1"}) {
    EXPECT_FALSE(make_compressor(bad, {}).is_ok()) << bad;
  }
}

// ---- The interleaving policy, against a brute-force simulation of its schedule. ----

// What the policy should do at one call, computed with sorting and plain loops.
struct PolicySimulator {
  int64_t warmup, tau0, calls = 0, trad = 0, last_exact = 0, tau;
  double density;
  bool stable = false, has = false;
  float thr = 0;

  PolicySimulator(double d, int64_t w, int64_t t) : warmup(w), tau0(t), tau(t), density(d) {}

  // Returns the global indices the traditional path sends, or nullopt on an all-dimension call.
  std::optional<std::vector<int64_t>> step(const std::vector<float>& x, const StepInfo& info) {
    const bool late = info.total_steps > 0 && 4 * info.step > 3 * info.total_steps;
    if (calls++ % 2 == 1 || (late && stable)) return std::nullopt;
    std::vector<int64_t> sent;
    if (!has || trad < warmup || trad - last_exact >= tau) {
      const auto k = std::max<int64_t>(1, static_cast<int64_t>(density * x.size()));
      sent = reference_top(x, k);
      float smallest = std::numeric_limits<float>::infinity();
      for (int64_t i : sent) smallest = std::min(smallest, std::fabs(x[i]));
      if (has && trad >= warmup) {
        const double change = std::fabs(static_cast<double>(smallest) - thr), eps = thr / 10.0;
        if (change < eps / 2) {
          tau += 2, stable = true;
        } else if (change < eps) {
          tau += 1, stable = true;
        } else {
          tau = std::max<int64_t>(std::min<int64_t>(5, tau0), tau - (change > 2 * eps ? 2 : 1));
          stable = false;
        }
      }
      thr = smallest, has = true, last_exact = trad;
    } else {
      for (size_t i = 0; i < x.size(); ++i) {
        if (std::fabs(x[i]) > thr) sent.push_back(static_cast<int64_t>(i));
      }
    }
    ++trad;
    return sent;
  }
};

// Indices a sparse payload (tag 1) sends, decoded from the documented format.
std::vector<int64_t> sparse_indices(const std::vector<std::byte>& payload) {
  EXPECT_EQ(payload[0], std::byte{1});
  const uint32_t count = load<uint32_t>(payload.data() + 1);
  std::vector<int64_t> indices;
  for (uint32_t i = 0; i < count; ++i)
    indices.push_back(load<uint32_t>(payload.data() + 5 + 4 * i));
  return indices;
}

TEST(AdtopkTest, InterleavingFollowsTheBruteForceSchedule) {
  const Shape shape = {40, 50};
  const auto base = gaussian(2000, 77);
  // Scales chosen so thr is stable for a while, then jumps, then drifts: tau grows and shrinks.
  auto scale_at = [](int64_t step) {
    if (step < 60) return 1.0f;
    if (step < 90) return step % 4 == 0 ? 3.0f : 1.0f;
    return 1.0f + 0.07f * static_cast<float>(step % 5);
  };
  for (const std::string spec : {"adtopk:density=0.02,interleave=true,warmup=3,tau=2",
                                 "adtopk:density=0.3,interleave=true,warmup=15,tau=5"}) {
    auto c = make(spec);
    const double density = spec.find("0.02") != std::string::npos ? 0.02 : 0.3;
    PolicySimulator sim(density, spec.find("warmup=3") != std::string::npos ? 3 : 15,
                        spec.find("tau=2") != std::string::npos ? 2 : 5);
    TensorId id = c->register_tensor({"w", shape}).value();
    int exact = 0, masked = 0, dense = 0;
    for (int64_t step = 0; step < 160; ++step) {
      std::vector<float> x = base;
      // A small per-step perturbation keeps selections changing.
      const auto noise = gaussian(2000, 1000 + static_cast<uint32_t>(step), 0.05f);
      for (size_t i = 0; i < x.size(); ++i) x[i] = (x[i] + noise[i]) * scale_at(step);
      const StepInfo info{step, 200};
      const auto expected = sim.step(x, info);
      const auto payload = compress(*c, id, x, info);
      ASSERT_FALSE(payload.empty());
      if (!expected) {
        ASSERT_EQ(payload[0], std::byte{0}) << spec << " step " << step;
        std::vector<std::byte> body(payload.begin() + 1, payload.end());
        expect_fixed_payload_selects_reference(body, x, shape, density);
        continue;
      }
      // Tag 1 lists the indices; tag 2 (when that would be larger) is the dense masked array.
      ASSERT_TRUE(payload[0] == std::byte{1} || payload[0] == std::byte{2});
      if (payload[0] == std::byte{1}) {
        ASSERT_EQ(sparse_indices(payload), *expected) << spec << " step " << step;
      } else {
        ++dense;
      }
      (sim.last_exact == sim.trad - 1 ? exact : masked)++;
      std::vector<float> sent(2000, 0.0f);
      for (int64_t i : *expected) sent[i] = x[i];
      std::vector<float> accum(2000, 0.0f);
      ASSERT_TRUE(
          c->decompress_accumulate(id, payload, {accum.data(), DType::kF32, shape}).is_ok());
      ASSERT_EQ(accum, sent) << spec << " step " << step;
    }
    EXPECT_GT(exact, 10) << spec;
    EXPECT_GT(masked, 10) << spec;  // the threshold really was reused
    EXPECT_NE(sim.tau, sim.tau0) << spec << ": the schedule never adapted";
    if (density > 0.2) {
      EXPECT_GT(dense, 0) << "the dense fallback was not exercised";
    }
  }
}

TEST(AdtopkTest, InterleavingStateRoundTripsExactly) {
  const std::string spec = "adtopk:density=0.05,interleave=true,warmup=2,tau=3";
  auto a = make(spec);
  auto b = make(spec);
  for (Compressor* c : {a.get(), b.get()}) {
    ASSERT_TRUE(c->register_tensor({"fc.weight", {30, 40}}).is_ok());
    ASSERT_TRUE(c->register_tensor({"fc.bias", {30}}).is_ok());
    ASSERT_TRUE(c->register_tensor({"conv.weight", {6, 8, 3, 3}}).is_ok());
  }
  for (int64_t step = 0; step < 13; ++step) {
    compress(*a, 0, gaussian(1200, 300 + step), {step, 0});
    compress(*a, 2, gaussian(432, 400 + step), {step, 0});
  }
  const StateDict state = a->export_state();
  EXPECT_TRUE(state.contains("fc.weight:adtopk.counters"));
  EXPECT_TRUE(state.contains("fc.weight:adtopk.threshold"));
  EXPECT_FALSE(state.contains("fc.bias:adtopk.counters"));  // 1-D tensors have no policy
  ASSERT_TRUE(b->import_state(state).is_ok());
  EXPECT_EQ(b->export_state().size(), state.size());
  for (int64_t step = 13; step < 40; ++step) {
    const auto x = gaussian(1200, 500 + step, 1.0f + 0.1f * (step % 3));
    ASSERT_EQ(compress(*a, 0, x, {step, 0}), compress(*b, 0, x, {step, 0})) << "step " << step;
    const auto y = gaussian(432, 600 + step);
    ASSERT_EQ(compress(*a, 2, y, {step, 0}), compress(*b, 2, y, {step, 0})) << "step " << step;
  }

  // A fresh compressor without state restarts the schedule; a malformed entry is rejected.
  auto fresh = make(spec);
  ASSERT_TRUE(fresh->register_tensor({"fc.weight", {30, 40}}).is_ok());
  StateDict broken = state;
  broken["fc.weight:adtopk.counters"].shape = {5};
  EXPECT_EQ(fresh->import_state(broken).code(), StatusCode::kDataLoss);
  broken = state;
  std::memset(broken["fc.weight:adtopk.counters"].data.data() + 3 * 8, 0, 8);  // tau = 0
  EXPECT_EQ(fresh->import_state(broken).code(), StatusCode::kDataLoss);
  EXPECT_TRUE(fresh->import_state({}).is_ok());
}

TEST(AdtopkTest, AThreadPoolGivesTheSameBytes) {
  // Large tensors split axis 0 over the pool; the payload must not depend on it.
  const Shape shape = {256, 512, 3, 3};
  const auto x = gaussian(shape_numel(shape), 31);
  ThreadPool pool(2);
  CompressorContext context;
  context.pool = &pool;
  auto pooled = make_compressor("adtopk:density=0.01", context).value();
  auto serial = make("adtopk:density=0.01");
  ASSERT_EQ(pooled->register_tensor({"w", shape}).value(), 0);
  ASSERT_EQ(serial->register_tensor({"w", shape}).value(), 0);
  const auto expected = compress(*serial, 0, x);
  EXPECT_EQ(compress(*pooled, 0, x), expected);
  expect_fixed_payload_selects_reference(expected, x, shape, 0.01);
}

}  // namespace
}  // namespace frugal
