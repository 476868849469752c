// Failure behaviour of the local backend: missing and departed ranks, disagreeing calls.
#include <gtest/gtest.h>

#include <thread>

#include "comm/factory.h"

namespace frugal {
namespace {

std::vector<std::unique_ptr<Communicator>> group(int n, int64_t timeout_ms) {
  auto made = make_local_group(n, timeout_ms);
  EXPECT_TRUE(made.is_ok()) << made.status().to_string();
  return std::move(made).value();
}

Status allreduce_floats(Communicator& comm, size_t count) {
  std::vector<float> v(count, 1.0f);
  return comm.allreduce(flat_view(v.data(), DType::kF32, static_cast<int64_t>(count)),
                        ReduceOp::kSum);
}

TEST(LocalCommunicator, MissingRankTimesOutNamingIt) {
  auto comms = group(3, 300);
  std::vector<Status> results(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {  // rank 2 never calls
    threads.emplace_back([&, r] { results[r] = allreduce_floats(*comms[r], 10); });
  }
  for (auto& t : threads) t.join();
  for (const Status& s : results) {
    EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded);
    EXPECT_NE(s.message().find("rank(s) 2 did not join"), std::string::npos) << s.to_string();
  }
  // The group is broken now: later calls fail fast with the same error.
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(allreduce_floats(*comms[0], 10).code(), StatusCode::kDeadlineExceeded);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(100));
}

TEST(LocalCommunicator, DepartedRankIsNamed) {
  auto comms = group(3, 10'000);
  std::vector<Status> results(3);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      results[r] = allreduce_floats(*comms[r], 100);  // completes with rank 1 too
      if (results[r].is_ok()) results[r] = allreduce_floats(*comms[r], 100);
    });
  }
  threads.emplace_back([&] {
    results[2] = allreduce_floats(*comms[2], 100);
    comms[2].reset();  // rank 2 dies before the second collective
  });
  auto start = std::chrono::steady_clock::now();
  for (auto& t : threads) t.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_TRUE(results[2].is_ok());
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(results[r].code(), StatusCode::kUnavailable);
    EXPECT_NE(results[r].message().find("rank 2 left the group"), std::string::npos)
        << results[r].to_string();
  }
}

TEST(LocalCommunicator, MismatchedSizesAreRejectedOnEveryRank) {
  auto comms = group(2, 5'000);
  std::vector<Status> results(2);
  std::thread a([&] { results[0] = allreduce_floats(*comms[0], 1000); });
  std::thread b([&] { results[1] = allreduce_floats(*comms[1], 999); });
  a.join();
  b.join();
  for (const Status& s : results) {
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("rank 0 called allreduce(f32 x 1000, sum), rank 1 called "
                               "allreduce(f32 x 999, sum)"),
              std::string::npos)
        << s.to_string();
  }
}

TEST(LocalCommunicator, MismatchedOperationsAreRejected) {
  auto comms = group(2, 5'000);
  std::vector<Status> results(2);
  std::thread a([&] { results[0] = comms[0]->barrier(); });
  std::thread b([&] { results[1] = allreduce_floats(*comms[1], 4); });
  a.join();
  b.join();
  for (const Status& s : results)
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
}

TEST(LocalCommunicator, LocalArgumentErrors) {
  auto comms = group(1, 1'000);
  std::vector<std::byte> in(4), out(3);
  EXPECT_EQ(comms[0]->allgather(in, out).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(comms[0]->broadcast(out, 1).code(), StatusCode::kInvalidArgument);
  std::vector<int32_t> ints(4);
  Status avg = comms[0]->allreduce(flat_view(ints.data(), DType::kI32, 4), ReduceOp::kAvg);
  EXPECT_EQ(avg.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(avg.message().find("floating"), std::string::npos);
  EXPECT_EQ(comms[0]->split(-1, 0).status().code(), StatusCode::kInvalidArgument);
}

TEST(Factory, UnknownBackendListsTheValidOnes) {
  CommConfig config;
  config.backend = "nccl";
  auto made = make_communicator(config);
  ASSERT_FALSE(made.is_ok());
  EXPECT_EQ(made.status().message(), "unknown backend 'nccl'; valid: local, gloo, mpi");
}

TEST(Factory, LocalBackendNeedsOneProcess) {
  CommConfig config;
  config.backend = "local";
  config.world_size = 2;
  EXPECT_EQ(make_communicator(config).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace frugal
