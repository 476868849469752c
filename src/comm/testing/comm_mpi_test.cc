// The backend conformance suite for "mpi", run as one process per rank under mpirun:
//   scripts/mpirun -np 4 --oversubscribe build/src/comm/comm_mpi_test
// Every rank runs every test (the checks are collectives). Only rank 0 prints gtest's usual
// output; other ranks print just their failures, prefixed with their rank. A rank with failures
// exits non-zero, which makes mpirun end the job and exit non-zero; rank 0 also lists the ranks
// that failed.
//
// The MpiFailureMode tests are skipped unless mpi_failure_test (which drives mpirun from the
// outside) sets FRUGAL_TEST_FAIL_RANK, FRUGAL_TEST_KILL_RANK or FRUGAL_TEST_DELAY_RANK: they
// fail or end the job on purpose.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "comm/backends.h"
#include "comm/mpi_communicator.h"
#include "comm/testing/conformance.h"

namespace frugal {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

constexpr int64_t kSuiteTimeoutMs = 120'000;  // 64 MiB collectives on 4 ranks sharing 2 cores

// The world communicator every test shares; owned by main().
Communicator* g_world = nullptr;

Communicator& world() { return *g_world; }

Result<std::unique_ptr<Communicator>> make_world(int64_t timeout_ms) {
  CommConfig config;
  config.backend = "mpi";
  config.timeout_ms = timeout_ms;
  return detail::make_mpi_communicator(config);
}

// A child with every rank of the world, so a test may change its settings or break it.
std::unique_ptr<Communicator> private_copy_of_world() {
  auto made = world().split(/*color=*/0, /*key=*/world().rank());
  EXPECT_TRUE(made.is_ok()) << made.status().to_string();
  return made.is_ok() ? std::move(made).value() : nullptr;
}

TEST(MpiBackend, RankAndSizeComeFromMpi) {
  int world_rank = -1;
  int world_size = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  EXPECT_EQ(world().rank(), world_rank);
  EXPECT_EQ(world().size(), world_size);
  EXPECT_EQ(world().backend(), "mpi");
  EXPECT_EQ(world().timeout(), milliseconds(kSuiteTimeoutMs));
  if (const char* launched_size = std::getenv("OMPI_COMM_WORLD_SIZE")) {
    EXPECT_EQ(world().size(), std::atoi(launched_size));
  }
  EXPECT_TRUE(detail::mpi_backend_built());
}

TEST(MpiBackend, AllreduceEveryDtypeAndOp) {
  for (DType dtype : {DType::kF32, DType::kF64, DType::kF16, DType::kBF16, DType::kI32, DType::kI64,
                      DType::kU8}) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax, ReduceOp::kMin}) {
      if (op == ReduceOp::kAvg && !is_floating(dtype)) continue;
      for (size_t count : {size_t{0}, size_t{1}, size_t{1031}}) {
        testing::check_allreduce(world(), dtype, op, count);
      }
    }
  }
}

TEST(MpiBackend, AvgOfIntegersIsRejected) {
  auto comm = private_copy_of_world();
  ASSERT_NE(comm, nullptr);
  std::vector<int32_t> values(8, 1);
  Status status = comm->allreduce(flat_view(values.data(), DType::kI32, 8), ReduceOp::kAvg);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.to_string();
}

TEST(MpiBackend, Allgather) {
  for (size_t bytes : {size_t{0}, size_t{1}, size_t{13}, size_t{65'537}}) {
    testing::check_allgather(world(), bytes);
  }
}

TEST(MpiBackend, Allgatherv) {
  testing::check_allgatherv(world(), 3, 0, 5);         // rank 0 sends nothing
  testing::check_allgatherv(world(), 1000, 17, 4099);  // uneven
  testing::check_allgatherv(world(), 0, 0, 1);         // nobody sends anything
}

TEST(MpiBackend, BroadcastFromEveryRoot) {
  for (int root = 0; root < world().size(); ++root) {
    for (size_t bytes : {size_t{0}, size_t{1}, size_t{100'003}}) {
      testing::check_broadcast(world(), bytes, root);
    }
  }
}

TEST(MpiBackend, Alltoallv) {
  for (size_t base : {size_t{0}, size_t{1}, size_t{4001}}) testing::check_alltoallv(world(), base);
}

TEST(MpiBackend, Barrier) { testing::check_barrier(world()); }

TEST(MpiBackend, Split) { testing::check_split(world()); }

// Distinct communicators may be used from different threads at once (MPI_THREAD_MULTIPLE).
TEST(MpiBackend, SplitChildrenWorkConcurrentlyFromTwoThreads) {
  auto first = private_copy_of_world();
  auto second = private_copy_of_world();
  ASSERT_NE(first, nullptr);
  ASSERT_NE(second, nullptr);
  std::thread other([&] {
    for (int i = 0; i < 20; ++i)
      testing::check_allreduce(*second, DType::kF64, ReduceOp::kSum, 777);
  });
  for (int i = 0; i < 20; ++i) testing::check_allgatherv(*first, 1000, 17, 4099);
  other.join();
}

// Transfers beyond INT_MAX elements or bytes take other paths: several calls (allreduce,
// broadcast) or derived datatypes at 64-bit displacements (allgather, allgatherv, alltoallv).
// Lowering the per-call limit runs those paths on small buffers.
TEST(MpiBackend, PathsForCountsBeyondIntWithALoweredLimit) {
  auto comm = private_copy_of_world();
  ASSERT_NE(comm, nullptr);
  auto* mpi = dynamic_cast<detail::MpiCommunicator*>(comm.get());
  ASSERT_NE(mpi, nullptr);
  for (size_t limit : {size_t{1}, size_t{1000}}) {
    SCOPED_TRACE("max count per call " + std::to_string(limit));
    mpi->set_max_count_per_call_for_testing(limit);
    testing::check_allreduce(*comm, DType::kF32, ReduceOp::kSum, 3001);
    testing::check_allreduce(*comm, DType::kBF16, ReduceOp::kAvg, 2049);
    testing::check_allreduce(*comm, DType::kI64, ReduceOp::kMax, 0);
    testing::check_broadcast(*comm, 4001, comm->size() - 1);
    testing::check_broadcast(*comm, 0, 0);
    testing::check_allgather(*comm, 2501);
    testing::check_allgather(*comm, 0);
    testing::check_allgatherv(*comm, 1000, 17, 4099);
    testing::check_allgatherv(*comm, 3, 0, 5);
    testing::check_alltoallv(*comm, 4001);
    testing::check_alltoallv(*comm, 0);
    testing::check_split(*comm);
  }
  // Over 64 KiB in several calls: from 4 ranks on, allreduce sends from a copy of the buffer.
  // (Not with a limit of 1: 20'000 concurrent requests take minutes to poll.)
  mpi->set_max_count_per_call_for_testing(4096);
  testing::check_allreduce(*comm, DType::kF32, ReduceOp::kSum, 20'011);
  testing::check_allreduce(*comm, DType::kF16, ReduceOp::kMax, 40'009);
}

// The failure contract: after an error every later call fails fast, and the communicator's
// siblings are unaffected. Every rank passes the same bad root, so no collective is left open.
TEST(MpiBackend, ErrorBreaksOnlyThatCommunicator) {
  auto comm = private_copy_of_world();
  ASSERT_NE(comm, nullptr);
  std::vector<std::byte> buf(16);
  Status status = comm->broadcast(buf, /*root=*/comm->size());
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.to_string();
  EXPECT_NE(status.message().find("root"), std::string::npos) << status.message();
  const Clock::time_point start = Clock::now();
  Status later = comm->barrier();
  EXPECT_EQ(later.code(), StatusCode::kFailedPrecondition) << later.to_string();
  EXPECT_NE(later.message().find("broken"), std::string::npos) << later.message();
  EXPECT_LT(Clock::now() - start, milliseconds(100));
  testing::check_barrier(world());
}

TEST(MpiBackend, AllOperationsIncludingLargeBuffers) {
  testing::check_all_operations(world(), /*include_large=*/true);
}

int env_int(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::atoi(value) : fallback;
}

// FRUGAL_TEST_FAIL_RANK=r: an assertion fails on rank r only; the whole job must fail.
TEST(MpiFailureMode, AssertionFailsOnOneRank) {
  const int fail_rank = env_int("FRUGAL_TEST_FAIL_RANK", -1);
  if (fail_rank < 0) GTEST_SKIP() << "run by mpi_failure_test with FRUGAL_TEST_FAIL_RANK";
  EXPECT_NE(world().rank(), fail_rank) << "deliberate failure on rank " << fail_rank;
  testing::check_barrier(world());
}

// FRUGAL_TEST_KILL_RANK=r: rank r SIGKILLs itself between allreduces while the others wait in
// the next one. Nothing returns here: mpirun must notice the death and end every rank.
TEST(MpiFailureMode, RankKilledMidCollective) {
  const int kill_rank = env_int("FRUGAL_TEST_KILL_RANK", -1);
  if (kill_rank < 0) GTEST_SKIP() << "run by mpi_failure_test with FRUGAL_TEST_KILL_RANK";
  std::vector<float> values(1 << 16);
  for (int iteration = 0; iteration < 1000; ++iteration) {
    if (world().rank() == kill_rank && iteration == 5) {
      std::fprintf(stderr, "frugal-kill-test: rank %d sends itself SIGKILL at iteration %d\n",
                   kill_rank, iteration);
      std::fflush(stderr);
      raise(SIGKILL);
    }
    Status status =
        world().allreduce(flat_view(values.data(), DType::kF32, 1 << 16), ReduceOp::kSum);
    if (!status.is_ok()) {
      std::fprintf(stderr, "frugal-kill-test: rank %d: allreduce returned %s\n", world().rank(),
                   status.to_string().c_str());
      ADD_FAILURE() << status.to_string();
      return;
    }
  }
  ADD_FAILURE() << "rank " << kill_rank << " did not die, or mpirun did not end the job";
}

// FRUGAL_TEST_DELAY_RANK=r: rank r joins an allreduce FRUGAL_TEST_DELAY_MS (default 5000) late;
// the others have a 1000 ms timeout and must return DeadlineExceeded in about that time, then
// fail fast on every communicator. The process then exits without MPI_Finalize (documented in
// mpi_communicator.cc), so mpirun ends the late rank and reports an improper exit.
TEST(MpiFailureMode, LateRankMakesTheOthersTimeOut) {
  const int late_rank = env_int("FRUGAL_TEST_DELAY_RANK", -1);
  if (late_rank < 0) GTEST_SKIP() << "run by mpi_failure_test with FRUGAL_TEST_DELAY_RANK";
  const int delay_ms = env_int("FRUGAL_TEST_DELAY_MS", 5000);
  constexpr int64_t kTimeoutMs = 1000;
  auto made = make_world(kTimeoutMs);
  ASSERT_TRUE(made.is_ok()) << made.status().to_string();
  std::unique_ptr<Communicator> comm = std::move(made).value();
  std::vector<float> values(1024, 1.0f);
  const MutableView view = flat_view(values.data(), DType::kF32, 1024);
  ASSERT_TRUE(comm->allreduce(view, ReduceOp::kSum).is_ok());  // everyone is here

  const int rank = comm->rank();
  if (rank == late_rank) {
    std::this_thread::sleep_for(milliseconds(delay_ms));
    Status status = comm->allreduce(view, ReduceOp::kSum);
    std::fprintf(stderr, "frugal-timeout-test: late rank %d: allreduce returned %s\n", rank,
                 status.to_string().c_str());
    return;
  }
  const Clock::time_point start = Clock::now();
  Status status = comm->allreduce(view, ReduceOp::kSum);
  const auto waited = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
  std::fprintf(stderr, "frugal-timeout-test: rank %d: %s after %lld ms: %s\n", rank,
               std::string(status_code_name(status.code())).c_str(),
               static_cast<long long>(waited.count()), status.message().c_str());
  EXPECT_EQ(status.code(), StatusCode::kDeadlineExceeded) << status.to_string();
  EXPECT_NE(status.message().find("allreduce"), std::string::npos);
  EXPECT_NE(status.message().find("rank " + std::to_string(rank)), std::string::npos);
  EXPECT_NE(status.message().find("1000 ms"), std::string::npos);
  EXPECT_NE(status.message().find("cannot tell which peer"), std::string::npos);
  EXPECT_GE(waited, milliseconds(kTimeoutMs));
  EXPECT_LT(waited, milliseconds(kTimeoutMs + 2000));

  // The abandoned allreduce cannot be cancelled: this and every other MPI communicator of the
  // process now fail fast instead of driving MPI's progress engine again.
  const Clock::time_point later_start = Clock::now();
  Status same = comm->barrier();
  Status other = world().barrier();
  EXPECT_LT(Clock::now() - later_start, milliseconds(100));
  EXPECT_EQ(same.code(), StatusCode::kFailedPrecondition) << same.to_string();
  EXPECT_EQ(other.code(), StatusCode::kFailedPrecondition) << other.to_string();
  std::fprintf(stderr, "frugal-timeout-test: rank %d: later calls fail fast: %s\n", rank,
               other.to_string().c_str());
}

// On ranks other than 0: prints only failures, each prefixed with the rank.
class FailureOnlyPrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailureOnlyPrinter(int rank) : rank_(rank) {}

  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                 result.file_name() != nullptr ? result.file_name() : "?", result.line_number(),
                 result.message());
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed()) {
      std::fprintf(stderr, "[rank %d] [  FAILED  ] %s.%s\n", rank_, info.test_suite_name(),
                   info.name());
    }
  }

 private:
  int rank_;
};

// Rank 0 names every rank that had failures; a rank whose tests failed exits non-zero itself, so
// mpirun fails and names that process. Skipped if the world is broken (a failure-mode test ran).
void report_failed_ranks(bool failed_here) {
  std::vector<int32_t> verdicts(static_cast<size_t>(world().size()));
  const int32_t mine = failed_here ? 1 : 0;
  Status status =
      world().allgather(std::as_bytes(std::span<const int32_t>(&mine, 1)), bytes_of(verdicts));
  if (!status.is_ok() || world().rank() != 0) return;
  for (int r = 0; r < world().size(); ++r) {
    if (verdicts[r] != 0) std::fprintf(stderr, "comm_mpi_test: rank %d had failures\n", r);
  }
}

}  // namespace
}  // namespace frugal

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto made = frugal::make_world(frugal::kSuiteTimeoutMs);
  if (!made.is_ok()) {
    std::fprintf(stderr, "comm_mpi_test: %s\n", made.status().to_string().c_str());
    return 1;
  }
  std::unique_ptr<frugal::Communicator> world = std::move(made).value();
  frugal::g_world = world.get();

  if (world->rank() != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new frugal::FailureOnlyPrinter(world->rank()));
  }
  const int failed = RUN_ALL_TESTS();
  frugal::report_failed_ranks(failed != 0);
  frugal::g_world = nullptr;
  world.reset();  // before MPI_Finalize, which runs at exit
  return failed != 0 ? 1 : 0;
}
