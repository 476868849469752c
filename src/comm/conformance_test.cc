// Every operation on the in-process backends (local, gloo) with 1..4 ranks against serial
// references. The same suite runs on mpi under mpirun (testing/comm_mpi_test.cc).
#include <gtest/gtest.h>

#include "comm/testing/conformance.h"
#include "comm/testing/rank_runner.h"

namespace frugal {
namespace {

struct Case {
  std::string backend;
  int world_size;
};

void PrintTo(const Case& c, std::ostream* out) { *out << c.backend << " x" << c.world_size; }

class ConformanceTest : public ::testing::TestWithParam<Case> {};

TEST_P(ConformanceTest, AllOperations) {
  testing::run_in_process_ranks(
      GetParam().backend, GetParam().world_size, 30'000,
      [](Communicator& comm) { testing::check_all_operations(comm, false); });
}

TEST_P(ConformanceTest, LargeBuffers) {
  testing::run_in_process_ranks(
      GetParam().backend, GetParam().world_size, 60'000, [](Communicator& comm) {
        testing::check_allreduce(comm, DType::kF32, ReduceOp::kSum, 16u << 20);  // 64 MiB
        testing::check_allgatherv(comm, 1, 64u << 20, UINT32_MAX);               // 64 MiB per rank
      });
}

TEST_P(ConformanceTest, SplitGroupsAreIndependent) {
  testing::run_in_process_ranks(GetParam().backend, GetParam().world_size, 30'000,
                                [](Communicator& comm) { testing::check_split(comm); });
}

// Bad input across ranks: one rank passes a different element count. Every rank must get the
// same clear error (the gloo path goes through the consistency check of make_communicator).
TEST_P(ConformanceTest, MismatchedSizesAreRejectedOnEveryRank) {
  if (GetParam().world_size < 2) GTEST_SKIP() << "needs two ranks to disagree";
  testing::run_in_process_ranks(
      GetParam().backend, GetParam().world_size, 10'000, [](Communicator& comm) {
        std::vector<float> v(1000 + (comm.rank() == 1 ? 1 : 0), 1.0f);
        Status s =
            comm.allreduce(flat_view(v.data(), DType::kF32, int64_t(v.size())), ReduceOp::kSum);
        EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
        EXPECT_NE(s.message().find("rank 1 called allreduce"), std::string::npos) << s.to_string();
      });
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (const char* backend : {"local", "gloo"}) {
    for (int n = 1; n <= 4; ++n) cases.push_back({backend, n});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Backends, ConformanceTest, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.backend + "_" + std::to_string(info.param.world_size) +
                                  "ranks";
                         });

}  // namespace
}  // namespace frugal
