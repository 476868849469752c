#include "torch/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>

namespace frugal {
namespace {

std::vector<int64_t> iota(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), int64_t{0});
  return v;
}

TEST(SamplerTest, EpochPermutationIsAPermutationThatChangesWithEpochAndSeed) {
  const auto a = epoch_permutation(1000, 7, 0);
  auto sorted = a;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, iota(1000));
  EXPECT_EQ(a, epoch_permutation(1000, 7, 0));  // deterministic
  EXPECT_NE(a, epoch_permutation(1000, 7, 1));
  EXPECT_NE(a, epoch_permutation(1000, 8, 0));
  EXPECT_NE(a, iota(1000));
  EXPECT_TRUE(epoch_permutation(0, 7, 0).empty());
  EXPECT_EQ(epoch_permutation(1, 7, 3), std::vector<int64_t>{0});
}

TEST(SamplerTest, EveryPositionIsEquallyLikelyForEveryElement) {
  // Chi-square-style check of uniformity: over 4000 epochs, element 0 lands at each of the 8
  // positions about 500 times (binomial sd ~ 21); 6 sd is a generous bound.
  std::vector<int> where(8);
  for (int64_t epoch = 0; epoch < 4000; ++epoch) {
    const auto perm = epoch_permutation(8, 3, epoch);
    ++where[static_cast<size_t>(std::find(perm.begin(), perm.end(), 0) - perm.begin())];
  }
  for (int count : where) EXPECT_NEAR(count, 500, 130);
}

TEST(SamplerTest, DropTailShardsAreDisjointEqualAndCoverTheHeadOfThePermutation) {
  for (int64_t size : {0, 1, 3, 10, 11, 1003}) {
    for (int world : {1, 2, 3, 4, 8}) {
      std::set<int64_t> seen;
      const auto perm = epoch_permutation(size, 5, 2);
      for (int rank = 0; rank < world; ++rank) {
        ShardOptions options{size, rank, world, 5, true, true};
        const auto shard = shard_indices(options, 2);
        ASSERT_EQ(static_cast<int64_t>(shard.size()), size / world);
        ASSERT_EQ(shard_size(options), size / world);
        for (int64_t i : shard) EXPECT_TRUE(seen.insert(i).second) << "duplicate " << i;
      }
      const std::set<int64_t> head(perm.begin(), perm.begin() + (size / world) * world);
      EXPECT_EQ(seen, head) << "size " << size << " world " << world;
    }
  }
}

TEST(SamplerTest, EvaluationShardsCoverEverySampleOnce) {
  for (int64_t size : {0, 5, 10, 10001}) {
    for (int world : {1, 3, 4, 7}) {
      std::vector<int64_t> all;
      for (int rank = 0; rank < world; ++rank) {
        ShardOptions options{size, rank, world, 0, false, false};
        const auto shard = shard_indices(options, 0);
        EXPECT_EQ(static_cast<int64_t>(shard.size()), shard_size(options));
        all.insert(all.end(), shard.begin(), shard.end());
      }
      std::sort(all.begin(), all.end());
      EXPECT_EQ(all, iota(size)) << "size " << size << " world " << world;
    }
  }
}

// The property data-parallel equivalence rests on: the b-th batches of n ranks with batch B
// together hold exactly the b-th batch of one rank with batch n*B.
TEST(SamplerTest, WorkersBatchesUnionToTheSingleWorkersGlobalBatch) {
  constexpr int64_t kSize = 999, kBatch = 8;
  for (int world : {2, 3, 4}) {
    const auto single = shard_indices(ShardOptions{kSize, 0, 1, 11, true, true}, 4);
    std::vector<std::vector<int64_t>> shards;
    for (int rank = 0; rank < world; ++rank) {
      shards.push_back(shard_indices(ShardOptions{kSize, rank, world, 11, true, true}, 4));
    }
    const int64_t batches = static_cast<int64_t>(shards[0].size()) / kBatch;
    for (int64_t b = 0; b < batches; ++b) {
      std::multiset<int64_t> from_workers;
      for (const auto& shard : shards) {
        from_workers.insert(shard.begin() + b * kBatch, shard.begin() + (b + 1) * kBatch);
      }
      const std::multiset<int64_t> global(single.begin() + b * kBatch * world,
                                          single.begin() + (b + 1) * kBatch * world);
      ASSERT_EQ(from_workers, global) << "world " << world << " batch " << b;
    }
  }
}

}  // namespace
}  // namespace frugal
