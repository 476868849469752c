#include "core/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <numeric>

namespace frugal {
namespace {

TEST(ThreadPool, ParallelForCoversEveryIndexOnce) {
  for (size_t threads : {0u, 1u, 3u}) {
    ThreadPool pool(threads);
    for (size_t n : {0u, 1u, 7u, 10'000u}) {
      std::vector<int> hits(n, 0);
      pool.parallel_for(n, 16, [&](size_t begin, size_t end) {
        for (size_t i = begin; i < end; ++i) ++hits[i];
      });
      EXPECT_EQ(std::count(hits.begin(), hits.end(), 1), static_cast<long>(n))
          << threads << " threads, n=" << n;
    }
  }
}

TEST(ThreadPool, SubmitRunsEveryTaskBeforeDestruction) {
  std::atomic<int> done{0};
  {
    ThreadPool pool(2);
    for (int i = 0; i < 100; ++i) pool.submit([&] { ++done; });
  }
  EXPECT_EQ(done.load(), 100);
}

}  // namespace
}  // namespace frugal
