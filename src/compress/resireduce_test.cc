// ResiReduce against hand-written expectations: the grouping rule on ResNet-like names, the
// running weighted mean of a group, the rows and columns a 2-D sub-residual keeps, the bytes it
// saves, state round trips (groups mid-round and sub-residual indices), concurrency and
// rejections. The inner is the test-only brute-force top-k, or the registered fp16.
#include <cmath>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "compress/memories_internal.h"
#include "compress/memories_test_util.h"
#include "compress/testing/compressors.h"

namespace frugal {
namespace {

using memory_internal::GroupingRule;
using memory_internal::kept_count;
using memory_testing::compress_once;
using memory_testing::decode;
using memory_testing::expect_rejected;
using memory_testing::f32_entry;
using memory_testing::gaussian;
using memory_testing::i32_entry;
using memory_testing::make_test_compressor;

std::unique_ptr<Compressor> make(std::string_view spec) {
  return testing::expect_made(make_test_compressor(spec), spec);
}

// A ResNet-50-like registration order (stem, the first two blocks of layer1, three of layer3,
// the classifier) with torchvision's shapes.
const std::vector<TensorInfo> kResNetLike = {
    {"conv1.weight", {64, 3, 7, 7}},
    {"bn1.weight", {64}},
    {"bn1.bias", {64}},
    {"layer1.0.conv1.weight", {64, 64, 1, 1}},
    {"layer1.0.bn1.weight", {64}},
    {"layer1.0.conv2.weight", {64, 64, 3, 3}},
    {"layer1.0.conv3.weight", {256, 64, 1, 1}},
    {"layer1.0.downsample.0.weight", {256, 64, 1, 1}},
    {"layer1.1.conv1.weight", {64, 256, 1, 1}},
    {"layer1.1.bn1.weight", {64}},
    {"layer1.1.conv2.weight", {64, 64, 3, 3}},
    {"layer1.1.conv3.weight", {256, 64, 1, 1}},
    {"layer1.2.conv1.weight", {64, 256, 1, 1}},
    {"layer1.2.conv2.weight", {64, 64, 3, 3}},
    {"layer1.2.conv3.weight", {256, 64, 1, 1}},
    {"layer3.0.conv1.weight", {256, 512, 1, 1}},
    {"layer3.0.conv2.weight", {256, 256, 3, 3}},
    {"layer3.0.conv3.weight", {1024, 256, 1, 1}},
    {"layer3.0.downsample.0.weight", {1024, 512, 1, 1}},
    {"layer3.1.conv1.weight", {256, 1024, 1, 1}},
    {"layer3.1.conv2.weight", {256, 256, 3, 3}},
    {"layer3.1.conv3.weight", {1024, 256, 1, 1}},
    {"layer3.2.conv1.weight", {256, 1024, 1, 1}},
    {"layer3.2.conv2.weight", {256, 256, 3, 3}},
    {"layer3.2.conv3.weight", {1024, 256, 1, 1}},
    {"fc.weight", {1000, 2048}},
    {"fc.bias", {1000}},
};

// The groups, worked out by hand from the rule (same shape, >= 2 dims, same name once digit runs
// are '#', chained to the previous such tensor).
const std::vector<std::vector<std::string>> kExpectedGroups = {
    {"layer1.0.conv2.weight", "layer1.1.conv2.weight", "layer1.2.conv2.weight"},
    {"layer1.0.conv3.weight", "layer1.1.conv3.weight", "layer1.2.conv3.weight"},
    {"layer1.1.conv1.weight", "layer1.2.conv1.weight"},
    {"layer3.0.conv2.weight", "layer3.1.conv2.weight", "layer3.2.conv2.weight"},
    {"layer3.0.conv3.weight", "layer3.1.conv3.weight", "layer3.2.conv3.weight"},
    {"layer3.1.conv1.weight", "layer3.2.conv1.weight"},
};

TEST(ResiReduceTest, PatternReplacesDigitRuns) {
  EXPECT_EQ(GroupingRule::pattern("layer3.14.conv2.weight"), "layer#.#.conv#.weight");
  EXPECT_EQ(GroupingRule::pattern("h.0.attn.c_attn.weight"), "h.#.attn.c_attn.weight");
  EXPECT_EQ(GroupingRule::pattern("fc"), "fc");
  EXPECT_EQ(GroupingRule::pattern("12"), "#");
}

TEST(ResiReduceTest, GroupingRuleOnResNetNames) {
  GroupingRule rule;
  std::vector<int> group_of(kResNetLike.size(), -1);
  std::vector<std::vector<std::string>> groups;
  for (size_t i = 0; i < kResNetLike.size(); ++i) {
    const TensorId joins = rule.add(static_cast<TensorId>(i), kResNetLike[i]);
    if (joins < 0) continue;
    if (group_of[joins] < 0) {
      group_of[joins] = static_cast<int>(groups.size());
      groups.push_back({kResNetLike[joins].name});
    }
    group_of[i] = group_of[joins];
    groups[group_of[i]].push_back(kResNetLike[i].name);
  }
  std::sort(groups.begin(), groups.end());
  auto expected = kExpectedGroups;
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(groups, expected);
}

TEST(ResiReduceTest, LayoutAndBytesSavedOnResNetNames) {
  auto c = make("resireduce(ef(brutek:count=10))");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->spec(),
            "resireduce(ef(brutek:count=10)):mode=weighted,rows=0.5,cols=0.5,min_2d=65536");
  for (const TensorInfo& info : kResNetLike) ASSERT_TRUE(c->register_tensor(info).is_ok());
  const StateDict state = c->export_state();
  std::set<std::string> group_keys;
  std::set<std::string> plain_keys;
  for (const auto& [key, value] : state) {
    const std::string name = key.substr(0, key.find(':'));
    const std::string field = key.substr(key.find(':') + 1);
    if (field == "resireduce.group_residual") group_keys.insert(name);
    if (field == "ef.residual") plain_keys.insert(name);
  }
  std::set<std::string> expected_leaders;
  std::set<std::string> grouped;
  int64_t grouped_numel = 0;
  int64_t group_numel = 0;
  for (const auto& group : kExpectedGroups) {
    expected_leaders.insert(group.front());
    for (const std::string& name : group) grouped.insert(name);
    for (const TensorInfo& info : kResNetLike) {
      if (info.name == group.front()) {
        group_numel += shape_numel(info.shape);
        grouped_numel += shape_numel(info.shape) * static_cast<int64_t>(group.size());
      }
    }
  }
  EXPECT_EQ(group_keys, expected_leaders);
  int64_t total_numel = 0;
  int64_t plain_numel = 0;
  for (const TensorInfo& info : kResNetLike) {
    total_numel += shape_numel(info.shape);
    const bool plain = !grouped.contains(info.name) && info.name != "fc.weight";
    EXPECT_EQ(plain_keys.contains(info.name), plain) << info.name;
    if (plain) plain_numel += shape_numel(info.shape);
  }
  // fc.weight, 2-D and 2048000 >= 65536 elements, keeps 500 rows x 1024 columns.
  EXPECT_EQ(i32_entry(state, "fc.weight:resireduce.rows").size(), 500u);
  EXPECT_EQ(i32_entry(state, "fc.weight:resireduce.cols").size(), 1024u);
  const int64_t held = 4 * (plain_numel + group_numel + 500 * 1024 + 500 + 1024);
  EXPECT_EQ(c->stats().residual_bytes, held);
  EXPECT_EQ(c->stats().residual_bytes_saved, 4 * total_numel - held);
  EXPECT_EQ(4 * total_numel - held,
            4 * (grouped_numel - group_numel) + 4 * (1000 * 2048 - (500 * 1024 + 500 + 1024)));
}

// A large 2-D tensor registered alone gets a sub-residual; when the next tensor joins it in a
// group, its residual becomes the group's dense one (carrying what it held).
TEST(ResiReduceTest, SubResidualTensorThatJoinsAGroupBecomesDense) {
  auto c = make("resireduce(ef(brutek:count=0)):min_2d=20");
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->register_tensor({"a.0.w", {4, 5}}).is_ok());
  auto g = gaussian(20, 4);
  ASSERT_TRUE(compress_once(*c, 0, g, 0).is_ok());
  StateDict state = c->export_state();
  const std::vector<int32_t> rows = i32_entry(state, "a.0.w:resireduce.rows");
  const std::vector<int32_t> cols = i32_entry(state, "a.0.w:resireduce.cols");
  ASSERT_EQ(rows.size(), 2u);
  ASSERT_EQ(cols.size(), 2u);
  ASSERT_TRUE(c->register_tensor({"a.1.w", {4, 5}}).is_ok());
  state = c->export_state();
  EXPECT_EQ(state.count("a.0.w:resireduce.rows"), 0u);
  std::vector<float> expected(20, 0.0f);
  for (int32_t r : rows) {
    for (int32_t col : cols) expected[r * 5 + col] = g[r * 5 + col];
  }
  EXPECT_EQ(f32_entry(state, "a.0.w:resireduce.group_residual"), expected);
  EXPECT_EQ(c->stats().residual_bytes, 80);
}

TEST(ResiReduceTest, KeptCountIsTheFlooredFractionAtLeastOne) {
  EXPECT_EQ(kept_count(0.5, 1000), 500);
  EXPECT_EQ(kept_count(0.5, 33), 16);
  EXPECT_EQ(kept_count(0.29, 100), 29);
  EXPECT_EQ(kept_count(0.01, 10), 1);
  EXPECT_EQ(kept_count(1.0, 7), 7);
  EXPECT_EQ(kept_count(0.5, 0), 0);
}

double weight(const std::vector<double>& r) {
  double l1 = 0;
  double l2 = 0;
  for (double x : r) {
    l1 += std::fabs(x);
    l2 += x * x;
  }
  const auto n = static_cast<double>(r.size());
  return 0.5 * l1 / n + 0.5 * std::sqrt(l2) / std::sqrt(n);
}

// Three members of one group, 4 elements each, inner sends the single largest magnitude.
TEST(ResiReduceTest, GroupKeepsTheRunningWeightedMean) {
  for (const std::string mode : {"weighted", "mean"}) {
    auto c = make("resireduce(ef(brutek:count=1)):mode=" + mode);
    ASSERT_NE(c, nullptr);
    for (int b = 1; b <= 3; ++b) {
      ASSERT_TRUE(
          c->register_tensor({"block" + std::to_string(b) + ".conv.weight", {2, 2}}).is_ok());
    }
    auto w = [&](const std::vector<double>& r) { return mode == "mean" ? 1.0 : weight(r); };
    const std::string key = "block1.conv.weight:resireduce.group_residual";

    // Member 1 compensates with the zero residual: c1 = g1, sends 4 at index 0.
    const std::vector<float> g1 = {4, 1, -2, 0};
    ASSERT_EQ(decode(*c, 0, compress_once(*c, 0, g1, 0).value()), (std::vector<float>{4, 0, 0, 0}));
    const std::vector<double> r1 = {0, 1, -2, 0};
    EXPECT_EQ(f32_entry(c->export_state(), key), (std::vector<float>{0, 1, -2, 0}));

    // Member 2 compensates with r1: c2 = {1, 2, -1, 8}, sends 8 at index 3.
    const std::vector<float> g2 = {1, 1, 1, 8};
    ASSERT_EQ(decode(*c, 1, compress_once(*c, 1, g2, 0).value()), (std::vector<float>{0, 0, 0, 8}));
    const std::vector<double> r2 = {1, 2, -1, 0};
    const double w1 = w(r1);
    const double w2 = w(r2);
    std::vector<double> s2(4);
    for (int i = 0; i < 4; ++i) s2[i] = (w1 * r1[i] + w2 * r2[i]) / (w1 + w2);
    std::vector<float> got = f32_entry(c->export_state(), key);
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(got[i], s2[i], 1e-6) << mode << " " << i;

    // Member 3 compensates with the mean of r1 and r2.
    const std::vector<float> g3 = {0, -6, 0, 1};
    std::vector<double> c3(4);
    for (int i = 0; i < 4; ++i) c3[i] = s2[i] + g3[i];
    std::vector<float> sent3 = decode(*c, 2, compress_once(*c, 2, g3, 0).value());
    EXPECT_NEAR(sent3[1], c3[1], 1e-6);  // |c3[1]| ~ 4.5 is the largest
    std::vector<double> r3 = c3;
    r3[1] = 0;
    const double w3 = w(r3);
    got = f32_entry(c->export_state(), key);
    for (int i = 0; i < 4; ++i) {
      EXPECT_NEAR(got[i], (w1 * r1[i] + w2 * r2[i] + w3 * r3[i]) / (w1 + w2 + w3), 1e-6)
          << mode << " " << i;
    }

    // Next step: member 1 compensates with that mean; the round restarts.
    const std::vector<float> s3 = got;
    const std::vector<float> g4 = {0.5f, 0.25f, 0, 0};
    std::vector<float> sent4 = decode(*c, 0, compress_once(*c, 0, g4, 1).value());
    std::vector<float> c4(4);
    for (int i = 0; i < 4; ++i) c4[i] = g4[i] + s3[i];
    size_t top = 0;
    for (size_t i = 1; i < 4; ++i) {
      if (std::fabs(c4[i]) > std::fabs(c4[top])) top = i;
    }
    EXPECT_EQ(sent4[top], c4[top]);
    c4[top] = 0;
    EXPECT_EQ(f32_entry(c->export_state(), key), c4) << "first member of a round: S = r";
    EXPECT_EQ(c->stats().residual_bytes, 16);
    EXPECT_EQ(c->stats().residual_bytes_saved, 32);
  }
}

// A dense inner (fp16, kSum) folds the payload through decompress_accumulate instead of a scatter.
TEST(ResiReduceTest, GroupMeanWithDenseInner) {
  auto c = make("resireduce(ef(fp16)):mode=weighted");
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->register_tensor({"a.0.w", {30, 10}}).is_ok());
  ASSERT_TRUE(c->register_tensor({"a.1.w", {30, 10}}).is_ok());
  auto g1 = gaussian(300, 1, 3.0f);
  auto g2 = gaussian(300, 2, 3.0f);
  ASSERT_TRUE(compress_once(*c, 0, g1, 0).is_ok());
  auto p2 = compress_once(*c, 1, g2, 0);
  ASSERT_TRUE(p2.is_ok());
  std::vector<double> r1(300);
  std::vector<double> r2(300);
  for (size_t i = 0; i < 300; ++i) {
    r1[i] = g1[i] - f16_to_f32(f32_to_f16(g1[i]));
    const float c2 = g2[i] + static_cast<float>(r1[i]);
    r2[i] = c2 - f16_to_f32(f32_to_f16(c2));
  }
  const double w1 = weight(r1);
  const double w2 = weight(r2);
  auto got = f32_entry(c->export_state(), "a.0.w:resireduce.group_residual");
  ASSERT_EQ(got.size(), 300u);
  for (size_t i = 0; i < 300; ++i) {
    const double expected = (w1 * r1[i] + w2 * r2[i]) / (w1 + w2);
    EXPECT_NEAR(got[i], expected, 1e-6 + 1e-4 * std::fabs(expected)) << i;
  }
}

// "fc.weight" 6 x 8 with rows=0.5 and cols=0.25 keeps 3 rows x 2 columns of the largest L1.
TEST(ResiReduceTest, SubResidualKeepsTheLargestRowsAndColumns) {
  auto c = make("resireduce(ef(brutek:count=0)):rows=0.5,cols=0.25,min_2d=48");
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->register_tensor({"fc.weight", {6, 8}}).is_ok());
  // Alternating signs with a scale per row, plus two bumps that favour columns 2 and 6.
  std::vector<float> g(48);
  const float row_scale[6] = {1, 2, 1, 0.2f, 3, 2};
  for (int r = 0; r < 6; ++r) {
    for (int col = 0; col < 8; ++col) {
      g[r * 8 + col] = row_scale[r] * ((r + col) % 2 == 0 ? 1.0f : -1.0f);
    }
  }
  g[0 * 8 + 2] += 5;  // column 2 and row 0 gain 5
  g[3 * 8 + 6] -= 4;  // column 6 and row 3 gain 4
  // Row L1 now: 13, 16, 8, 5.6, 24, 16 -> rows 4, then 1 and 5 (tie at 16), not row 0 (13).
  // Column L1: base 9.2 each; column 2: 9.2 - 1 + 6 = 14.2; column 6: 9.2 - 0.2 + 4.2 = 13.2.
  auto payload = compress_once(*c, 0, g, 0);
  ASSERT_TRUE(payload.is_ok());
  StateDict state = c->export_state();
  EXPECT_EQ(i32_entry(state, "fc.weight:resireduce.rows"), (std::vector<int32_t>{1, 4, 5}));
  EXPECT_EQ(i32_entry(state, "fc.weight:resireduce.cols"), (std::vector<int32_t>{2, 6}));
  EXPECT_EQ(f32_entry(state, "fc.weight:resireduce.sub_residual"),
            (std::vector<float>{g[1 * 8 + 2], g[1 * 8 + 6], g[4 * 8 + 2], g[4 * 8 + 6],
                                g[5 * 8 + 2], g[5 * 8 + 6]}));
  EXPECT_EQ(state.count("fc.weight:ef.residual"), 0u);
  EXPECT_EQ(c->stats().residual_bytes, 4 * (6 + 3 + 2));
  EXPECT_EQ(c->stats().residual_bytes_saved, 4 * 48 - 4 * (6 + 3 + 2));

  // The next step compensates with exactly that sub-matrix: send everything and compare.
  auto all = make("resireduce(ef(brutek:count=48)):rows=0.5,cols=0.25,min_2d=48");
  ASSERT_TRUE(all->register_tensor({"fc.weight", {6, 8}}).is_ok());
  ASSERT_TRUE(all->import_state(state).is_ok());
  auto g2 = gaussian(48, 3);
  std::vector<float> expected = g2;
  for (int r : {1, 4, 5}) {
    for (int col : {2, 6}) expected[r * 8 + col] += g[r * 8 + col];
  }
  EXPECT_EQ(decode(*all, 0, compress_once(*all, 0, g2, 1).value()), expected);
  // Nothing is left: every norm ties at 0, so the lowest indices are kept.
  state = all->export_state();
  EXPECT_EQ(i32_entry(state, "fc.weight:resireduce.rows"), (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(i32_entry(state, "fc.weight:resireduce.cols"), (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(f32_entry(state, "fc.weight:resireduce.sub_residual"), std::vector<float>(6, 0.0f));
}

// Registers a group of 3, a sub-residual tensor and a plain one.
void register_mixed(Compressor& c) {
  ASSERT_TRUE(c.register_tensor({"l.0.w", {6, 5}}).is_ok());
  ASSERT_TRUE(c.register_tensor({"fc.w", {20, 30}}).is_ok());
  ASSERT_TRUE(c.register_tensor({"l.1.w", {6, 5}}).is_ok());
  ASSERT_TRUE(c.register_tensor({"bias", {9}}).is_ok());
  ASSERT_TRUE(c.register_tensor({"l.2.w", {6, 5}}).is_ok());
}

TEST(ResiReduceTest, StateRoundTripMidRound) {
  const std::string spec = "resireduce(ef(brutek:count=3)):rows=0.3,cols=0.5,min_2d=100";
  auto a = make(spec);
  auto b = make(spec);
  ASSERT_NE(b, nullptr);
  register_mixed(*a);
  register_mixed(*b);
  auto grad = [&](TensorId id, int64_t step) {
    return gaussian(shape_numel(a->tensor(id).shape), static_cast<uint32_t>(step * 10 + id));
  };
  for (int64_t step = 0; step < 2; ++step) {
    for (TensorId id = 4; id >= 0; --id)
      ASSERT_TRUE(compress_once(*a, id, grad(id, step), step).is_ok());
  }
  // Step 2 stops after the group's first member (l.2.w in backward order).
  ASSERT_TRUE(compress_once(*a, 4, grad(4, 2), 2).is_ok());
  const StateDict saved = a->export_state();
  EXPECT_EQ(saved.count("l.0.w:resireduce.group_round"), 1u);
  EXPECT_EQ(i32_entry(saved, "fc.w:resireduce.rows").size(), 6u);
  EXPECT_EQ(i32_entry(saved, "fc.w:resireduce.cols").size(), 15u);
  ASSERT_TRUE(b->import_state(saved).is_ok());
  const StateDict restored = b->export_state();
  ASSERT_EQ(restored.size(), saved.size());
  for (const auto& [key, value] : saved) {
    ASSERT_TRUE(restored.contains(key)) << key;
    EXPECT_EQ(restored.at(key).data, value.data) << key;
    EXPECT_EQ(restored.at(key).shape, value.shape) << key;
  }
  for (int64_t step = 2; step < 4; ++step) {
    for (TensorId id = (step == 2 ? 3 : 4); id >= 0; --id) {
      EXPECT_EQ(compress_once(*a, id, grad(id, step), step).value(),
                compress_once(*b, id, grad(id, step), step).value())
          << "tensor " << id << " step " << step;
    }
  }

  // Bad indices and shapes are rejected and change nothing.
  const StateDict before = b->export_state();
  StateDict bad = saved;
  std::memcpy(bad["fc.w:resireduce.rows"].data.data(), "\x05\0\0\0\x01\0\0\0", 8);  // 5, 1
  EXPECT_EQ(b->import_state(bad).code(), StatusCode::kDataLoss);
  bad = saved;
  bad["l.0.w:resireduce.group_residual"].shape = {30};
  EXPECT_EQ(b->import_state(bad).code(), StatusCode::kDataLoss);
  bad = saved;
  bad.erase("fc.w:resireduce.cols");
  EXPECT_EQ(b->import_state(bad).code(), StatusCode::kDataLoss);
  const StateDict after = b->export_state();
  for (const auto& [key, value] : before) EXPECT_EQ(after.at(key).data, value.data) << key;
}

// Groups compressed from several threads at once match a serial run (each thread owns a group,
// so the result is deterministic); the sub-residual tensors share the scratch pool.
TEST(ResiReduceTest, ConcurrentCompressionMatchesSerial) {
  const std::string spec = "resireduce(ef(brutek:count=20)):min_2d=1000";
  auto serial = make(spec);
  auto parallel = make(spec);
  ASSERT_NE(parallel, nullptr);
  for (Compressor* c : {serial.get(), parallel.get()}) {
    for (int g = 0; g < 4; ++g) {
      for (int m = 0; m < 3; ++m) {
        const std::string name =
            "g" + std::string(1, static_cast<char>('a' + g)) + "." + std::to_string(m) + ".w";
        ASSERT_TRUE(c->register_tensor({name, {40, 30 + g}}).is_ok());
      }
      ASSERT_TRUE(
          c->register_tensor({"fc" + std::string(1, static_cast<char>('a' + g)), {50, 40 + g}})
              .is_ok());
    }
  }
  auto run = [](Compressor& c, int g, int64_t step, std::vector<std::vector<std::byte>>& out) {
    for (int m = 3; m >= 0; --m) {
      const TensorId id = g * 4 + m;
      auto grad = gaussian(shape_numel(c.tensor(id).shape), static_cast<uint32_t>(step * 100 + id));
      out[id] = compress_once(c, id, grad, step).value();
    }
  };
  for (int64_t step = 0; step < 3; ++step) {
    std::vector<std::vector<std::byte>> expected(16);
    std::vector<std::vector<std::byte>> got(16);
    for (int g = 0; g < 4; ++g) run(*serial, g, step, expected);
    std::vector<std::thread> threads;
    for (int g = 0; g < 4; ++g) threads.emplace_back([&, g] { run(*parallel, g, step, got); });
    for (auto& t : threads) t.join();
    EXPECT_EQ(got, expected) << "step " << step;
  }
}

TEST(ResiReduceTest, Rejections) {
  expect_rejected("resireduce(topk:density=0.01)", "resireduce(ef(topk:density=0.01))");
  expect_rejected("resireduce(fp16)", "resireduce(ef(<compressor>))");
  expect_rejected("resireduce(ef(ef(fp16)))", "memories do not nest");
  expect_rejected("resireduce(ef(fp16):rows=0.5)", "ef has no parameters");
  expect_rejected("resireduce(ef(stub:kind=two-phase))", "two-phase");
  auto registry = make_compressor("resireduce(topk:density=0.01)", {});
  ASSERT_FALSE(registry.is_ok());
  EXPECT_NE(registry.status().message().find("resireduce(ef("), std::string::npos);
  for (const char* bad : {"resireduce(ef(fp16)):mode=median", "resireduce(ef(fp16)):rows=0",
                          "resireduce(ef(fp16)):cols=1.5", "resireduce(ef(fp16)):min_2d=0"}) {
    auto made = make_compressor(bad, {});
    EXPECT_FALSE(made.is_ok()) << bad;
  }
  auto ok = make_compressor("resireduce(ef(fp16)):mode=mean,rows=0.25", {});
  ASSERT_TRUE(ok.is_ok()) << ok.status().to_string();
  EXPECT_EQ(ok.value()->spec(), "resireduce(ef(fp16)):mode=mean,rows=0.25,cols=0.5,min_2d=65536");
}

}  // namespace
}  // namespace frugal
