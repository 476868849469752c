#include "torch/sampler.h"

#include <numeric>
#include <random>

namespace frugal {
namespace {

// SplitMix64 finalizer: decorrelates (seed, epoch) pairs that differ in one bit.
uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

}  // namespace

std::vector<int64_t> epoch_permutation(int64_t dataset_size, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> perm(static_cast<size_t>(dataset_size));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  std::mt19937_64 gen(mix(seed ^ mix(static_cast<uint64_t>(epoch))));
  // Fisher-Yates with the generator's raw output reduced modulo the bound: the same sequence with
  // any standard library (std::shuffle's distribution is implementation-defined), so ranks built
  // with different toolchains still agree. The modulo bias (size / 2^64) is irrelevant.
  for (int64_t i = dataset_size - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(gen() % static_cast<uint64_t>(i + 1));
    std::swap(perm[static_cast<size_t>(i)], perm[static_cast<size_t>(j)]);
  }
  return perm;
}

int64_t shard_size(const ShardOptions& options) {
  const int64_t n = options.world_size;
  if (options.drop_tail) return options.dataset_size / n;
  return options.dataset_size / n + (options.rank < options.dataset_size % n ? 1 : 0);
}

std::vector<int64_t> shard_indices(const ShardOptions& options, int64_t epoch) {
  std::vector<int64_t> order;
  if (options.shuffle) {
    order = epoch_permutation(options.dataset_size, options.seed, epoch);
  } else {
    order.resize(static_cast<size_t>(options.dataset_size));
    std::iota(order.begin(), order.end(), int64_t{0});
  }
  const int64_t count = shard_size(options);
  std::vector<int64_t> shard(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    shard[static_cast<size_t>(i)] =
        order[static_cast<size_t>(options.rank + i * int64_t{options.world_size})];
  }
  return shard;
}

}  // namespace frugal
