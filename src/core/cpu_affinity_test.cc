#include "core/cpu_affinity.h"

#include <gtest/gtest.h>

#include <map>
#include <thread>

namespace frugal {
namespace {

// Every pair of host CPU count C and local rank count N, over a CPU list with gaps (as taskset
// or a cgroup leaves it): the shares must be what the header promises, checked property by
// property rather than against the same formula.
TEST(CpuShare, SplitsTheListIntoOrderedContiguousNearEqualRunsOrSpreadsRanksEvenly) {
  for (int c = 1; c <= 9; ++c) {
    std::vector<int> cpus;
    for (int i = 0; i < c; ++i) cpus.push_back(3 * i + (i % 2));  // 0, 4, 6, 10, ...
    for (int n = 1; n <= 12; ++n) {
      SCOPED_TRACE("C=" + std::to_string(c) + " N=" + std::to_string(n));
      std::vector<std::vector<int>> shares;
      for (int r = 0; r < n; ++r) shares.push_back(cpu_share(cpus, r, n));
      if (n <= c) {
        std::vector<int> joined;
        size_t smallest = cpus.size(), largest = 0;
        for (const auto& share : shares) {
          joined.insert(joined.end(), share.begin(), share.end());
          smallest = std::min(smallest, share.size());
          largest = std::max(largest, share.size());
        }
        EXPECT_EQ(joined, cpus) << "the shares, in rank order, are the list cut into runs";
        EXPECT_GE(smallest, 1u);
        EXPECT_LE(largest - smallest, 1u);
      } else {
        std::map<int, int> ranks_per_cpu;
        int previous = -1;
        for (const auto& share : shares) {
          ASSERT_EQ(share.size(), 1u);
          EXPECT_GE(share[0], previous) << "ranks fill the CPUs in order";
          previous = share[0];
          ++ranks_per_cpu[share[0]];
        }
        EXPECT_EQ(ranks_per_cpu.size(), cpus.size()) << "every CPU gets a rank";
        int fewest = n, most = 0;
        for (const auto& [cpu, count] : ranks_per_cpu) {
          fewest = std::min(fewest, count);
          most = std::max(most, count);
        }
        EXPECT_LE(most - fewest, 1);
      }
    }
  }
}

TEST(FormatCpuList, WritesRunsAsRangesLikeTaskset) {
  EXPECT_EQ(format_cpu_list(std::vector<int>{}), "");
  EXPECT_EQ(format_cpu_list(std::vector<int>{5}), "5");
  EXPECT_EQ(format_cpu_list(std::vector<int>{0, 1, 2, 3, 8, 10, 11}), "0-3,8,10-11");
  EXPECT_EQ(format_cpu_list(std::vector<int>{1, 3, 4}), "1,3-4");
}

#if defined(__linux__)
// Binding happens on a thread of its own, so the test process keeps its CPUs.
TEST(BindThisThread, RestrictsTheCallerAndTheThreadsItStartsLater) {
  auto before = allowed_cpus();
  ASSERT_TRUE(before.is_ok()) << before.status().to_string();
  ASSERT_FALSE(before->empty());
  const std::vector<int> target = {before->back()};
  std::vector<int> seen_by_caller, seen_by_child;
  std::thread([&] {
    ASSERT_TRUE(bind_this_thread(target).is_ok());
    seen_by_caller = allowed_cpus().value();
    std::thread([&] { seen_by_child = allowed_cpus().value(); }).join();
  }).join();
  EXPECT_EQ(seen_by_caller, target);
  EXPECT_EQ(seen_by_child, target);
  EXPECT_EQ(allowed_cpus().value(), *before) << "other threads keep their CPUs";
}

TEST(BindThisThread, RejectsCpusOutsideTheSetAndEmptySets) {
  std::thread([] {
    const Status out_of_range = bind_this_thread(std::vector<int>{-1});
    EXPECT_EQ(out_of_range.code(), StatusCode::kInvalidArgument) << out_of_range.to_string();
    EXPECT_FALSE(bind_this_thread(std::vector<int>{}).is_ok()) << "no CPU at all";
  }).join();
}
#endif

}  // namespace
}  // namespace frugal
