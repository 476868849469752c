// Which samples each rank trains on, epoch by epoch: PyTorch's DistributedSampler semantics with
// drop_last. One global permutation per epoch, drawn from (seed, epoch) and therefore identical on
// every rank; rank r of n takes positions r, r + n, r + 2n, ... of it. So the union of the ranks'
// b-th batches (batch size B each) is exactly positions [b*n*B, (b+1)*n*B) of the permutation:
// n workers with batch B see the same global batches as one worker with batch n*B. Pure
// functions; thread-safe.
#pragma once

#include <cstdint>
#include <vector>

namespace frugal {

struct ShardOptions {
  int64_t dataset_size = 0;
  int rank = 0;
  int world_size = 1;
  uint64_t seed = 0;
  bool shuffle = true;  // false: the identity permutation (evaluation)
  // true: every rank gets dataset_size / world_size samples (the tail is dropped), so all ranks
  // run the same number of steps. false: ranks 0..(size % n - 1) get one more (evaluation,
  // where every sample must be counted exactly once).
  bool drop_tail = true;
};

// The global permutation of [0, dataset_size) for `epoch` (Fisher-Yates on a generator seeded
// from seed and epoch).
std::vector<int64_t> epoch_permutation(int64_t dataset_size, uint64_t seed, int64_t epoch);

// Rank `options.rank`'s sample indices for `epoch`, in the order it visits them.
std::vector<int64_t> shard_indices(const ShardOptions& options, int64_t epoch);

// Number of indices shard_indices returns for `rank`.
int64_t shard_size(const ShardOptions& options);

}  // namespace frugal
