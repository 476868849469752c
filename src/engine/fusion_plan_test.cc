#include "engine/fusion_plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace frugal {
namespace {

TEST(ParseFusion, AcceptsEveryPlannerAndRejectsTheRest) {
  EXPECT_EQ(parse_fusion("none")->kind, FusionKind::kNone);
  EXPECT_EQ(parse_fusion("omgs")->kind, FusionKind::kOmgs);
  EXPECT_EQ(parse_fusion("safusion")->kind, FusionKind::kSafusion);
  EXPECT_EQ(parse_fusion("ssfusion")->kind, FusionKind::kSsfusion);
  auto bytes = parse_fusion("bytes:2.5");
  ASSERT_TRUE(bytes.is_ok());
  EXPECT_EQ(bytes->kind, FusionKind::kBytes);
  EXPECT_EQ(bytes->bytes, size_t{5} << 19);
  EXPECT_EQ(fusion_to_string(*bytes), "bytes:2.5");
  for (const char* bad : {"", "bytes", "bytes:", "bytes:0", "bytes:-1", "bytes:x", "horovod"}) {
    auto parsed = parse_fusion(bad);
    ASSERT_FALSE(parsed.is_ok()) << bad;
    EXPECT_NE(parsed.status().message().find("valid: none, bytes:MB"), std::string::npos)
        << parsed.status().message();
  }
}

// A random instance of the planning problem: ready times increasing along backward.
PlanRequest random_request(std::mt19937& rng, size_t count, FusionKind kind) {
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  PlanRequest request;
  request.kind = kind;
  request.world_size = 4;
  request.link = {200.0 * unit(rng), 0.01 * unit(rng), 0.005 * unit(rng)};
  request.size_exchange = unit(rng) < 0.5;
  request.dense_can_ride = unit(rng) < 0.5;
  double ready = 0;
  for (size_t t = 0; t < count; ++t) {
    TensorProfile p;
    p.bytes = 4 * static_cast<size_t>(1 + 100000 * unit(rng));
    ready += 300 * unit(rng);
    p.ready_us = ready;
    p.compress_us = 100 * unit(rng);
    p.payload_bytes = 0.02 * static_cast<double>(p.bytes);
    p.decompress_us = 10 * unit(rng);
    request.tensors.push_back(p);
    request.compressed.push_back(unit(rng) < 0.7);
  }
  return request;
}

// Every partition of [0, count) into consecutive buckets, as bucket plans.
std::vector<Bucket> buckets_of(const PlanRequest& request, uint32_t cuts, bool fused) {
  std::vector<Bucket> buckets;
  const size_t count = request.tensors.size();
  size_t begin = 0;
  for (size_t t = 0; t < count; ++t) {
    const bool cut_after = t + 1 == count || ((cuts >> t) & 1u);
    if (!cut_after) continue;
    Bucket bucket;
    bucket.index = static_cast<int>(buckets.size());
    bool any = false;
    for (size_t k = begin; k <= t; ++k) {
      bucket.tensors.push_back({static_cast<TensorId>(k), bucket.bytes, request.tensors[k].bytes,
                                static_cast<bool>(request.compressed[k])});
      bucket.bytes += request.tensors[k].bytes;
      any = any || request.compressed[k];
    }
    bucket.compress_fused = fused && any;
    buckets.push_back(bucket);
    begin = t + 1;
  }
  return buckets;
}

TEST(PlanByCostModel, SparsifyAheadPlanIsTheBestOfAllPartitions) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 40; ++trial) {
    const size_t count = 1 + static_cast<size_t>(trial % 9);
    const PlanRequest request = random_request(rng, count, FusionKind::kSafusion);
    const Plan plan = plan_by_cost_model(request);
    double best = std::numeric_limits<double>::infinity();
    for (uint32_t cuts = 0; cuts < (1u << (count - 1)); ++cuts) {
      best = std::min(best, simulate_plan(request, buckets_of(request, cuts, false)));
    }
    EXPECT_NEAR(plan.predicted_us, best, 1e-6 * best) << "trial " << trial;
    EXPECT_NEAR(simulate_plan(request, plan.buckets), plan.predicted_us, 1e-6 * best);
    // Consecutive, complete, in order, indices 0..B-1.
    TensorId next = 0;
    for (size_t b = 0; b < plan.buckets.size(); ++b) {
      EXPECT_EQ(plan.buckets[b].index, static_cast<int>(b));
      EXPECT_FALSE(plan.buckets[b].compress_fused);
      for (const TensorSlot& slot : plan.buckets[b].tensors) EXPECT_EQ(slot.id, next++);
    }
    EXPECT_EQ(next, static_cast<TensorId>(count));
  }
}

TEST(PlanByCostModel, SparsifyBehindPlanIsNoWorseThanAnyFixedPartition) {
  // The fused planner carries the compression thread's state greedily, so it is checked against
  // the simple extremes rather than proven optimal.
  std::mt19937 rng(11);
  for (int trial = 0; trial < 40; ++trial) {
    const size_t count = 2 + static_cast<size_t>(trial % 8);
    const PlanRequest request = random_request(rng, count, FusionKind::kOmgs);
    const Plan plan = plan_by_cost_model(request);
    const double per_tensor = simulate_plan(request, buckets_of(request, ~0u, true));
    const double one_bucket = simulate_plan(request, buckets_of(request, 0u, true));
    EXPECT_LE(plan.predicted_us, std::min(per_tensor, one_bucket) * (1 + 1e-9)) << trial;
    for (const Bucket& bucket : plan.buckets) {
      const bool any = std::any_of(bucket.tensors.begin(), bucket.tensors.end(),
                                   [](const TensorSlot& s) { return s.compressed; });
      EXPECT_EQ(bucket.compress_fused, any);
    }
  }
}

TEST(PlanByCostModel, LatencyFusesAndBandwidthSplits) {
  PlanRequest request;
  request.world_size = 4;
  for (int t = 0; t < 6; ++t) {
    request.tensors.push_back({4000, 100.0 * (t + 1), 5, 80, 1});
    request.compressed.push_back(true);
  }
  // Collectives cost mostly latency: one bucket at the end beats six.
  request.link = {10000, 0, 0};
  EXPECT_EQ(plan_by_cost_model(request).buckets.size(), 1u);
  // No latency: each tensor goes as soon as it is compressed (WFBP).
  request.link = {0, 0.001, 0.001};
  EXPECT_EQ(plan_by_cost_model(request).buckets.size(), 6u);
}

TEST(PlanByCostModel, DenseTensorsRideTheGatherWhereItSavesALatency) {
  // Two compressed tensors, each followed by a small dense one (a bias), all ready together.
  PlanRequest request;
  request.world_size = 4;
  request.dense_can_ride = true;
  for (int t = 0; t < 4; ++t) {
    const bool sparse = t % 2 == 0;
    request.tensors.push_back({sparse ? size_t{400000} : size_t{8000}, 100.0, 5, 4000, 1});
    request.compressed.push_back(sparse);
  }
  const auto riding_buckets = [&] {
    const Plan plan = plan_by_cost_model(request);
    int riding = 0;
    for (const Bucket& b : plan.buckets) {
      // Only a bucket with both dense and compressed tensors can carry its dense ones.
      const bool dense = std::any_of(b.tensors.begin(), b.tensors.end(),
                                     [](const TensorSlot& s) { return !s.compressed; });
      const bool sparse = std::any_of(b.tensors.begin(), b.tensors.end(),
                                      [](const TensorSlot& s) { return s.compressed; });
      if (b.dense_rides_gather) {
        EXPECT_TRUE(dense && sparse);
      }
      riding += b.dense_rides_gather ? 1 : 0;
    }
    return riding;
  };
  // Latency dominates: one bucket, whose biases ride in the allgather (1 collective, not 2).
  request.link = {10000, 0.001, 0.001};
  EXPECT_EQ(riding_buckets(), 1);
  const double riding = plan_by_cost_model(request).predicted_us;
  request.dense_can_ride = false;
  EXPECT_EQ(riding_buckets(), 0);
  EXPECT_NEAR(plan_by_cost_model(request).predicted_us - riding, 10000, 100);
  // Bytes dominate: n copies of the dense tensors cost more than a ring allreduce of them.
  request.dense_can_ride = true;
  request.link = {0, 0.01, 0.01};
  EXPECT_EQ(riding_buckets(), 0);
}

TEST(ChooseCompressed, SizeCutOffIsTheBestThresholdAndPerTensorIsTheBestChoice) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 30; ++trial) {
    const PlanRequest request = random_request(rng, 12, FusionKind::kSafusion);
    const auto dense = [&](const TensorProfile& t) {
      return static_cast<double>(t.bytes) * request.link.allreduce_us_per_byte;
    };
    const auto sparse = [&](const TensorProfile& t) {
      return t.compress_us +
             4 * (t.payload_bytes * request.link.allgather_us_per_byte + t.decompress_us);
    };
    const auto cost = [&](const std::vector<bool>& compressed) {
      double total = 0;
      for (size_t t = 0; t < compressed.size(); ++t) {
        total += compressed[t] ? sparse(request.tensors[t]) : dense(request.tensors[t]);
      }
      return total;
    };
    size_t cutoff = 0;
    const std::vector<bool> by_size =
        choose_compressed_by_size(request.tensors, request.link, 4, &cutoff);
    for (size_t t = 0; t < by_size.size(); ++t) {
      EXPECT_EQ(by_size[t], request.tensors[t].bytes >= cutoff) << trial;
    }
    // No size threshold does better.
    for (const TensorProfile& candidate : request.tensors) {
      std::vector<bool> alt;
      for (const TensorProfile& t : request.tensors) alt.push_back(t.bytes > candidate.bytes);
      EXPECT_LE(cost(by_size), cost(alt) + 1e-9) << trial;
    }
    const std::vector<bool> per_tensor =
        choose_compressed_per_tensor(request.tensors, request.link, 4);
    EXPECT_LE(cost(per_tensor), cost(by_size) + 1e-9) << trial;
  }
}

}  // namespace
}  // namespace frugal
