#include "engine/synchronizer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "comm/factory.h"
#include "core/timeline.h"
#include "engine/bucket.h"

namespace frugal {
namespace {

// Runs body(comm) on every rank of a local group, one thread per rank. Each thread owns its
// communicator and destroys it when its body returns, so peers see it leave (never a hang).
void run_ranks(int world_size, int64_t timeout_ms, const std::function<void(Communicator&)>& body) {
  auto group = make_local_group(world_size, timeout_ms);
  ASSERT_TRUE(group.is_ok()) << group.status().to_string();
  std::vector<std::thread> threads;
  for (auto& comm : group.value()) {
    threads.emplace_back([&body, owned = std::move(comm)]() mutable {
      body(*owned);
      owned.reset();
    });
  }
  for (auto& thread : threads) thread.join();
}

// The gradient value of element i of tensor t on rank r at step s: a fixed hash mapped to
// [-1, 1), so the reference below is computed without the Synchronizer.
float grad_value(int rank, int step, int tensor, int64_t i) {
  uint64_t x = (static_cast<uint64_t>(rank) << 48) ^ (static_cast<uint64_t>(step) << 40) ^
               (static_cast<uint64_t>(tensor) << 32) ^ static_cast<uint64_t>(i);
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return static_cast<float>(static_cast<double>(x >> 11) / static_cast<double>(1ULL << 53)) * 2.0f -
         1.0f;
}

double reference_average(int world_size, int step, int tensor, int64_t i) {
  double sum = 0;
  for (int r = 0; r < world_size; ++r) sum += grad_value(r, step, tensor, i);
  return sum / world_size;
}

std::vector<Shape> odd_shapes() {
  return {{1}, {3}, {7, 1}, {129}, {10, 100}, {17}, {4099}, {5}, {3, 111}, {2}, {777}, {61}, {1}};
}

int64_t ring_bytes(int64_t bytes, int n) { return n <= 1 ? 0 : 2 * (n - 1) * bytes / n; }

std::vector<size_t> bytes_of_floats(const std::vector<size_t>& floats) {
  std::vector<size_t> bytes;
  for (size_t f : floats) bytes.push_back(f * sizeof(float));
  return bytes;
}

std::vector<std::vector<TensorId>> ids_of(const std::vector<Bucket>& buckets) {
  std::vector<std::vector<TensorId>> ids;
  for (const Bucket& bucket : buckets) {
    ids.emplace_back();
    for (const TensorSlot& slot : bucket.tensors) ids.back().push_back(slot.id);
  }
  return ids;
}

using Ids = std::vector<std::vector<TensorId>>;

TEST(PlanBuckets, MatchesHandComputation) {
  // 400, 800, 1200, 200, 4000, 40 bytes.
  const auto sizes = bytes_of_floats({100, 200, 300, 50, 1000, 10});
  // First bucket capped at 1000: 400 + 800 > 1000, so tensor 0 alone. Then 800 + 1200 = 2000
  // fits 2000; + 200 does not; 200 + 4000 does not; 4000 + 40 does not.
  auto plan = plan_buckets(sizes, 2000, 1000);
  EXPECT_EQ(ids_of(plan), (Ids{{0}, {1, 2}, {3}, {4}, {5}}));
  ASSERT_EQ(plan.size(), 5u);
  EXPECT_EQ(plan[1].bytes, 2000u);
  EXPECT_EQ(plan[1].tensors[0].offset_bytes, 0u);
  EXPECT_EQ(plan[1].tensors[1].offset_bytes, 800u);
  for (size_t b = 0; b < plan.size(); ++b) EXPECT_EQ(plan[b].index, static_cast<int>(b));

  EXPECT_EQ(ids_of(plan_buckets(sizes, 0, 1000)), (Ids{{0}, {1}, {2}, {3}, {4}, {5}}));
  EXPECT_EQ(ids_of(plan_buckets(sizes, size_t{1} << 30, 1000)), (Ids{{0}, {1, 2, 3, 4, 5}}));
  EXPECT_EQ(ids_of(plan_buckets(sizes, size_t{1} << 30, 1200)), (Ids{{0, 1}, {2, 3, 4, 5}}));
  EXPECT_EQ(ids_of(plan_buckets(sizes, size_t{1} << 30, size_t{1} << 30)),
            (Ids{{0, 1, 2, 3, 4, 5}}));
  EXPECT_TRUE(plan_buckets({}, 100, 10).empty());
  // Tensors of >= 1200 bytes (2 and 4) stay alone, and their neighbours do not join them.
  EXPECT_EQ(ids_of(plan_buckets(sizes, size_t{1} << 30, size_t{1} << 30, 1200)),
            (Ids{{0, 1}, {2}, {3}, {4}, {5}}));
  EXPECT_EQ(ids_of(plan_buckets(sizes, 2000, 1000, 4000)), (Ids{{0}, {1, 2}, {3}, {4}, {5}}));
}

struct AverageCase {
  int world_size;
  size_t fusion_threshold_bytes;
  size_t first_bucket_bytes;
};

class SynchronizerAverageTest : public ::testing::TestWithParam<AverageCase> {};

TEST_P(SynchronizerAverageTest, EqualsSerialAverageForRandomOrdersAndThreads) {
  const AverageCase param = GetParam();
  const int n = param.world_size;
  const auto shapes = odd_shapes();
  const int num_tensors = static_cast<int>(shapes.size());
  constexpr int kSteps = 3;
  constexpr int kHookThreads = 3;
  run_ranks(n, 5000, [&](Communicator& comm) {
    SynchronizerOptions options;
    options.fusion_threshold_bytes = param.fusion_threshold_bytes;
    options.first_bucket_bytes = param.first_bucket_bytes;
    Synchronizer sync(comm, options);
    for (int t = 0; t < num_tensors; ++t) {
      auto id = sync.register_tensor("t" + std::to_string(t), shapes[t]);
      ASSERT_TRUE(id.is_ok()) << id.status().to_string();
      EXPECT_EQ(id.value(), t);
    }
    std::vector<std::vector<float>> grads(num_tensors);
    std::mt19937 rng(1234 + comm.rank());
    for (int step = 0; step < kSteps; ++step) {
      for (int t = 0; t < num_tensors; ++t) {
        grads[t].resize(static_cast<size_t>(shape_numel(shapes[t])));
        for (size_t i = 0; i < grads[t].size(); ++i)
          grads[t][i] = grad_value(comm.rank(), step, t, static_cast<int64_t>(i));
      }
      ASSERT_TRUE(sync.begin_step().is_ok());
      // A different order on every rank and step, spread over several hook threads.
      std::vector<int> order(num_tensors);
      for (int t = 0; t < num_tensors; ++t) order[t] = t;
      std::shuffle(order.begin(), order.end(), rng);
      std::atomic<int> next{0};
      std::vector<std::thread> hooks;
      for (int h = 0; h < kHookThreads; ++h) {
        hooks.emplace_back([&] {
          for (int k = next++; k < num_tensors; k = next++) {
            const int t = order[k];
            MutableView view{grads[t].data(), DType::kF32, shapes[t]};
            Status status = sync.grad_ready(t, view);
            EXPECT_TRUE(status.is_ok()) << status.to_string();
          }
        });
      }
      for (auto& hook : hooks) hook.join();
      Status status = sync.finish_step();
      ASSERT_TRUE(status.is_ok()) << status.to_string();

      int64_t mismatches = 0;
      for (int t = 0; t < num_tensors; ++t) {
        for (size_t i = 0; i < grads[t].size(); ++i) {
          const double expected = reference_average(n, step, t, static_cast<int64_t>(i));
          if (std::abs(grads[t][i] - expected) > 1e-6) ++mismatches;
        }
      }
      EXPECT_EQ(mismatches, 0) << "rank " << comm.rank() << " step " << step;

      const StepStats& stats = sync.last_step_stats();
      int64_t dense = 0;
      for (const Shape& shape : shapes) dense += shape_numel(shape) * 4;
      int64_t wire = 0;
      for (const Bucket& bucket : sync.buckets())
        wire += ring_bytes(static_cast<int64_t>(bucket.bytes), n);
      EXPECT_EQ(stats.step, step);
      EXPECT_EQ(stats.dense_bytes, dense);
      EXPECT_EQ(stats.num_buckets, static_cast<int>(sync.buckets().size()));
      EXPECT_EQ(stats.bytes_sent, wire);
      EXPECT_EQ(stats.bytes_received, wire);
      EXPECT_EQ(stats.compress_us, 0);
    }
    // The plan is the planner's, for the registered sizes.
    std::vector<size_t> sizes;
    for (const Shape& shape : shapes) sizes.push_back(static_cast<size_t>(shape_numel(shape)) * 4);
    EXPECT_EQ(ids_of(sync.buckets()),
              ids_of(plan_buckets(sizes, param.fusion_threshold_bytes, param.first_bucket_bytes)));
    if (param.fusion_threshold_bytes == 0) {
      EXPECT_EQ(static_cast<int>(sync.buckets().size()), num_tensors);
    }
  });
}

std::vector<AverageCase> average_cases() {
  std::vector<AverageCase> cases;
  for (int n = 1; n <= 4; ++n) {
    cases.push_back({n, 0, 0});                              // per tensor (WFBP)
    cases.push_back({n, 4096, 512});                         // small: many buckets
    cases.push_back({n, size_t{1} << 30, size_t{1} << 20});  // huge: first bucket + one
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Ranks, SynchronizerAverageTest, ::testing::ValuesIn(average_cases()),
                         [](const ::testing::TestParamInfo<AverageCase>& info) {
                           return "n" + std::to_string(info.param.world_size) + "_threshold" +
                                  std::to_string(info.param.fusion_threshold_bytes);
                         });

TEST(Synchronizer, CountersAndTimelineAddUp) {
  constexpr int kRanks = 3;
  const std::vector<int64_t> floats = {100, 200, 300, 50, 1000, 10};
  run_ranks(kRanks, 5000, [&](Communicator& comm) {
    Timeline timeline(comm.rank(), true);
    SynchronizerOptions options;
    options.fusion_threshold_bytes = 2000;
    options.first_bucket_bytes = 1000;
    options.timeline = &timeline;
    Synchronizer sync(comm, options);
    std::vector<std::vector<float>> grads;
    for (size_t t = 0; t < floats.size(); ++t) {
      ASSERT_TRUE(sync.register_tensor("p" + std::to_string(t), {floats[t]}).is_ok());
      grads.emplace_back(static_cast<size_t>(floats[t]), 1.0f);
    }
    ASSERT_TRUE(sync.begin_step().is_ok());
    for (size_t t = floats.size(); t-- > 0;) {  // reverse order: bucket 0 fills last
      ASSERT_TRUE(
          sync.grad_ready(static_cast<TensorId>(t), {grads[t].data(), DType::kF32, {floats[t]}})
              .is_ok());
    }
    ASSERT_TRUE(sync.finish_step().is_ok());
    for (const auto& grad : grads)
      for (float v : grad) ASSERT_EQ(v, 1.0f);

    // Buckets of 400, 2000, 200, 4000 and 40 bytes (see PlanBuckets.MatchesHandComputation);
    // per bucket 2(n-1)/n * S rounded down: 533 + 2666 + 266 + 5333 + 53.
    const StepStats& stats = sync.last_step_stats();
    EXPECT_EQ(stats.num_buckets, 5);
    EXPECT_EQ(stats.dense_bytes, 6640);
    EXPECT_EQ(stats.bytes_sent, 8851);
    EXPECT_EQ(stats.bytes_received, 8851);
    EXPECT_EQ(stats.compress_us, 0);
    EXPECT_GE(stats.comm_us, 0);
    EXPECT_GE(stats.wait_us, 0);

    int comm_events = 0, queue_events = 0, wait_events = 0, fuse_events = 0;
    for (const TraceEvent& event : timeline.events()) {
      comm_events += event.name == phase::kComm;
      queue_events += event.name == phase::kQueue;
      wait_events += event.name == phase::kWait;
      fuse_events += event.name == phase::kFuse;
    }
    EXPECT_EQ(comm_events, 5);
    EXPECT_EQ(queue_events, 5);
    EXPECT_EQ(wait_events, 1);
    EXPECT_EQ(fuse_events, 3);  // the two-tensor bucket: two copies in, one unpack
  });
}

TEST(Synchronizer, SumWhenNotAveraging) {
  run_ranks(2, 5000, [&](Communicator& comm) {
    SynchronizerOptions options;
    options.average = false;
    Synchronizer sync(comm, options);
    ASSERT_TRUE(sync.register_tensor("a", {5}).is_ok());
    ASSERT_TRUE(sync.register_tensor("b", {3}).is_ok());
    std::vector<float> a(5, 1.5f), b(3, static_cast<float>(comm.rank()));
    ASSERT_TRUE(sync.begin_step().is_ok());
    ASSERT_TRUE(sync.grad_ready(1, {b.data(), DType::kF32, {3}}).is_ok());
    ASSERT_TRUE(sync.grad_ready(0, {a.data(), DType::kF32, {5}}).is_ok());
    ASSERT_TRUE(sync.finish_step().is_ok());
    EXPECT_EQ(a, std::vector<float>(5, 3.0f));
    EXPECT_EQ(b, std::vector<float>(3, 1.0f));
  });
}

TEST(Synchronizer, TensorNeverReadyIsNamedAndNothingHangs) {
  const auto start = std::chrono::steady_clock::now();
  run_ranks(2, 500, [&](Communicator& comm) {
    SynchronizerOptions options;
    options.fusion_threshold_bytes = 0;
    Synchronizer sync(comm, options);
    const std::vector<std::string> names = {"head.bias", "head.weight", "layer.unused", "embed"};
    std::vector<std::vector<float>> grads;
    for (const auto& name : names) {
      ASSERT_TRUE(sync.register_tensor(name, {8}).is_ok());
      grads.emplace_back(8, 1.0f);
    }
    ASSERT_TRUE(sync.begin_step().is_ok());
    for (TensorId t = 0; t < 4; ++t) {
      if (comm.rank() == 0 && t == 2) continue;  // rank 0 never makes "layer.unused" ready
      Status status = sync.grad_ready(t, {grads[t].data(), DType::kF32, {8}});
      // Rank 1 may already see rank 0 gone (its step failed) and then fails fast.
      if (comm.rank() == 0) {
        ASSERT_TRUE(status.is_ok()) << status.to_string();
      }
    }
    Status status = sync.finish_step();
    EXPECT_FALSE(status.is_ok());
    if (comm.rank() == 0) {
      EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition) << status.to_string();
      EXPECT_NE(status.message().find("'layer.unused'"), std::string::npos) << status.to_string();
    }
    // Sticky: the collective sequences diverged, so the next step fails fast.
    EXPECT_FALSE(sync.begin_step().is_ok());
  });
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST(Synchronizer, RankThatLeavesFailsTheStepWithoutHanging) {
  const auto start = std::chrono::steady_clock::now();
  run_ranks(3, 2000, [&](Communicator& comm) {
    if (comm.rank() == 2) return;  // leaves at once: its communicator is destroyed
    Synchronizer sync(comm, SynchronizerOptions{});
    ASSERT_TRUE(sync.register_tensor("w", {1000}).is_ok());
    ASSERT_TRUE(sync.register_tensor("b", {10}).is_ok());
    std::vector<float> w(1000, 1.0f), b(10, 1.0f);
    ASSERT_TRUE(sync.begin_step().is_ok());
    // The step's error may already show in grad_ready (fail fast); finish_step must report it.
    (void)sync.grad_ready(0, {w.data(), DType::kF32, {1000}});
    (void)sync.grad_ready(1, {b.data(), DType::kF32, {10}});
    Status status = sync.finish_step();
    ASSERT_FALSE(status.is_ok());
    EXPECT_NE(status.message().find("rank 2"), std::string::npos) << status.to_string();
    Status again = sync.begin_step();
    EXPECT_FALSE(again.is_ok());
    EXPECT_NE(again.message().find("failed step"), std::string::npos) << again.to_string();
  });
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST(Synchronizer, RejectsMisuseWithClearErrors) {
  run_ranks(1, 2000, [&](Communicator& comm) {
    Synchronizer sync(comm, SynchronizerOptions{});
    EXPECT_EQ(sync.begin_step().code(), StatusCode::kFailedPrecondition);  // nothing registered
    EXPECT_EQ(sync.register_tensor("", {1}).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(sync.register_tensor("z", {0, 3}).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(sync.register_tensor("neg", {-1}).status().code(), StatusCode::kInvalidArgument);
    ASSERT_TRUE(sync.register_tensor("w", {2, 3}).is_ok());
    EXPECT_EQ(sync.register_tensor("w", {4}).status().code(), StatusCode::kInvalidArgument);
    std::vector<float> w(6, 2.0f);
    std::vector<double> wd(6, 2.0);
    EXPECT_EQ(sync.grad_ready(0, {w.data(), DType::kF32, {2, 3}}).code(),
              StatusCode::kFailedPrecondition);  // outside a step
    EXPECT_EQ(sync.finish_step().code(), StatusCode::kFailedPrecondition);
    ASSERT_TRUE(sync.begin_step().is_ok());
    EXPECT_EQ(sync.begin_step().code(), StatusCode::kFailedPrecondition);
    EXPECT_EQ(sync.register_tensor("late", {1}).status().code(), StatusCode::kFailedPrecondition);
    EXPECT_EQ(sync.grad_ready(1, {w.data(), DType::kF32, {2, 3}}).code(), StatusCode::kOutOfRange);
    Status shape = sync.grad_ready(0, {w.data(), DType::kF32, {3, 2}});
    EXPECT_EQ(shape.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(shape.message().find("'w'"), std::string::npos) << shape.to_string();
    EXPECT_EQ(sync.grad_ready(0, {wd.data(), DType::kF64, {2, 3}}).code(),
              StatusCode::kInvalidArgument);
    ASSERT_TRUE(sync.grad_ready(0, {w.data(), DType::kF32, {2, 3}}).is_ok());
    EXPECT_EQ(sync.grad_ready(0, {w.data(), DType::kF32, {2, 3}}).code(),
              StatusCode::kFailedPrecondition);  // twice
    ASSERT_TRUE(sync.finish_step().is_ok());
    EXPECT_EQ(w, std::vector<float>(6, 2.0f));  // average over one rank
    EXPECT_EQ(sync.last_step_stats().bytes_sent, 0);
  });
}

TEST(Synchronizer, DestroyedMidStepStopsCleanly) {
  run_ranks(1, 2000, [&](Communicator& comm) {
    Synchronizer sync(comm, SynchronizerOptions{.fusion_threshold_bytes = 0});
    ASSERT_TRUE(sync.register_tensor("a", {4}).is_ok());
    ASSERT_TRUE(sync.register_tensor("b", {4}).is_ok());
    std::vector<float> a(4, 1.0f);
    ASSERT_TRUE(sync.begin_step().is_ok());
    ASSERT_TRUE(sync.grad_ready(0, {a.data(), DType::kF32, {4}}).is_ok());
    // The destructor runs here, with "b" pending.
  });
}

}  // namespace
}  // namespace frugal

namespace frugal {
namespace {

// finish_step(on_bucket_done) hands every bucket back once, in order, already averaged; the
// tensors of later buckets may still be in flight, and the callback's time is not "waiting".
TEST(SynchronizerTest, BucketCallbacksComeInOrderWithAveragedGradients) {
  constexpr int kWorld = 3;
  const std::vector<Shape> shapes = odd_shapes();
  run_ranks(kWorld, 30'000, [&](Communicator& comm) {
    SynchronizerOptions options;
    options.fusion_threshold_bytes = 2000;
    options.first_bucket_bytes = 100;
    options.own_bucket_bytes = 4000;  // the 10x100 and 4099 tensors stay alone
    Synchronizer sync(comm, options);
    for (size_t t = 0; t < shapes.size(); ++t) {
      ASSERT_TRUE(sync.register_tensor("t" + std::to_string(t), shapes[t]).is_ok());
    }
    std::vector<std::vector<float>> grads(shapes.size());
    for (int step = 0; step < 3; ++step) {
      ASSERT_TRUE(sync.begin_step().is_ok());
      for (size_t t = 0; t < shapes.size(); ++t) {
        grads[t].resize(static_cast<size_t>(shape_numel(shapes[t])));
        for (size_t i = 0; i < grads[t].size(); ++i) {
          grads[t][i] = grad_value(comm.rank(), step, static_cast<int>(t), static_cast<int64_t>(i));
        }
        ASSERT_TRUE(
            sync.grad_ready(static_cast<TensorId>(t), {grads[t].data(), DType::kF32, shapes[t]})
                .is_ok());
      }
      std::vector<int> order;
      ASSERT_TRUE(sync.finish_step([&](const Bucket& bucket) {
                        order.push_back(bucket.index);
                        for (const TensorSlot& slot : bucket.tensors) {
                          const auto& g = grads[static_cast<size_t>(slot.id)];
                          for (size_t i = 0; i < g.size(); ++i) {
                            ASSERT_NEAR(g[i], reference_average(kWorld, step, slot.id, i), 1e-6);
                          }
                        }
                      })
                      .is_ok());
      std::vector<int> expected(sync.buckets().size());
      std::iota(expected.begin(), expected.end(), 0);
      EXPECT_EQ(order, expected);
    }
    int alone = 0;
    for (const Bucket& bucket : sync.buckets()) {
      if (bucket.bytes >= 4000) {
        EXPECT_EQ(bucket.tensors.size(), 1u);
        ++alone;
      }
    }
    EXPECT_EQ(alone, 2);
  });
}

}  // namespace
}  // namespace frugal
