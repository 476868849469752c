// Tests of the gloo backend with every rank a thread of this process, over real TCP on loopback.
// The conformance suite (testing/conformance.cc) checks every operation in depth; these tests
// cover what is particular to gloo: rendezvous, peer naming, failures, split.
#include "comm/gloo_communicator.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gloo/common/error.h>
#include <gloo/common/logging.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <numeric>
#include <thread>
#include <vector>

#include "comm/backends.h"
#include "comm/gloo_errors.h"
#include "comm/testing/rank_runner.h"
#include "core/clock.h"

namespace frugal::detail {
namespace {

using std::chrono::milliseconds;

constexpr int64_t kTimeoutMs = 5000;

double elapsed_ms(SteadyClock::time_point start) { return seconds_since(start) * 1000.0; }

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// A fresh rendezvous directory, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "frugal-gloo-XXXXXX").string();
    FRUGAL_CHECK(::mkdtemp(pattern.data()) != nullptr, "mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

CommConfig file_store_config(const std::string& dir, int world_size,
                             int64_t timeout_ms = kTimeoutMs) {
  CommConfig config;
  config.backend = "gloo";
  config.world_size = world_size;
  config.store_path = dir;
  config.timeout_ms = timeout_ms;
  return config;
}

CommConfig tcp_store_config(int port, int world_size, int64_t timeout_ms = kTimeoutMs) {
  CommConfig config;
  config.backend = "gloo";
  config.world_size = world_size;
  config.master_addr = "127.0.0.1";
  config.master_port = port;
  config.timeout_ms = timeout_ms;
  return config;
}

// Runs `body` on every rank of `base.world_size`, one thread per rank.
void run_ranks(const CommConfig& base, const std::function<void(Communicator&)>& body) {
  std::vector<std::thread> threads;
  for (int rank = 0; rank < base.world_size; ++rank) {
    threads.emplace_back([&, rank] {
      CommConfig config = base;
      config.rank = rank;
      auto comm = make_gloo_communicator(config);
      ASSERT_TRUE(comm.is_ok()) << "rank " << rank << ": " << comm.status().to_string();
      EXPECT_EQ((*comm)->rank(), rank);
      EXPECT_EQ((*comm)->size(), base.world_size);
      EXPECT_EQ((*comm)->backend(), "gloo");
      body(**comm);
    });
  }
  for (auto& thread : threads) thread.join();
}

// A few operations checked against closed-form results.
void check_some_operations(Communicator& comm) {
  const int rank = comm.rank();
  const int size = comm.size();

  std::vector<float> values(1000);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(rank * 1000 + i);
  ASSERT_TRUE(comm.allreduce(flat_view(values.data(), DType::kF32, 1000), ReduceOp::kSum).is_ok());
  for (size_t i = 0; i < values.size(); ++i) {
    // sum over r of (1000 r + i)
    ASSERT_EQ(values[i], 1000.0f * size * (size - 1) / 2 + static_cast<float>(size * i));
  }

  std::vector<double> averaged(7, static_cast<double>(rank));
  ASSERT_TRUE(comm.allreduce(flat_view(averaged.data(), DType::kF64, 7), ReduceOp::kAvg).is_ok());
  for (double value : averaged) EXPECT_DOUBLE_EQ(value, (size - 1) / 2.0);

  std::vector<int32_t> maxima = {rank, -rank, 7};
  ASSERT_TRUE(comm.allreduce(flat_view(maxima.data(), DType::kI32, 3), ReduceOp::kMax).is_ok());
  EXPECT_EQ(maxima, (std::vector<int32_t>{size - 1, 0, 7}));

  std::vector<uint16_t> halves(5, f32_to_bf16(static_cast<float>(rank + 1)));
  ASSERT_TRUE(comm.allreduce(flat_view(halves.data(), DType::kBF16, 5), ReduceOp::kSum).is_ok());
  for (uint16_t half : halves) EXPECT_EQ(bf16_to_f32(half), size * (size + 1) / 2.0f);

  std::vector<uint8_t> mine(3, static_cast<uint8_t>(rank + 1));
  std::vector<uint8_t> gathered(3 * size);
  ASSERT_TRUE(comm.allgather(bytes_of(mine), bytes_of(gathered)).is_ok());
  for (int r = 0; r < size; ++r) EXPECT_EQ(gathered[3 * r], r + 1);

  // Rank r contributes r bytes, so rank 0 contributes none.
  std::vector<size_t> counts(size);
  std::iota(counts.begin(), counts.end(), size_t{0});
  std::vector<uint8_t> contribution(rank, static_cast<uint8_t>(rank));
  std::vector<uint8_t> all(std::accumulate(counts.begin(), counts.end(), size_t{0}));
  ASSERT_TRUE(comm.allgatherv(bytes_of(contribution), counts, bytes_of(all)).is_ok());
  std::vector<uint8_t> expected_all;
  for (int r = 0; r < size; ++r)
    expected_all.insert(expected_all.end(), r, static_cast<uint8_t>(r));
  EXPECT_EQ(all, expected_all);

  std::vector<int64_t> broadcasted(4, rank == size - 1 ? 42 : -1);
  ASSERT_TRUE(comm.broadcast(bytes_of(broadcasted), size - 1).is_ok());
  EXPECT_EQ(broadcasted, std::vector<int64_t>(4, 42));

  // Rank i sends (i + j) % 3 bytes of value 10 i + j to rank j: some pairs send nothing.
  std::vector<size_t> send_counts(size), recv_counts(size);
  std::vector<uint8_t> send, expected_recv;
  for (int j = 0; j < size; ++j) {
    send_counts[j] = static_cast<size_t>((rank + j) % 3);
    send.insert(send.end(), send_counts[j], static_cast<uint8_t>(10 * rank + j));
    recv_counts[j] = static_cast<size_t>((j + rank) % 3);
    expected_recv.insert(expected_recv.end(), recv_counts[j], static_cast<uint8_t>(10 * j + rank));
  }
  std::vector<uint8_t> received(expected_recv.size());
  ASSERT_TRUE(comm.alltoallv(bytes_of(send), send_counts, bytes_of(received), recv_counts).is_ok());
  EXPECT_EQ(received, expected_recv);

  EXPECT_TRUE(comm.barrier().is_ok());
}

class GlooWorld : public ::testing::TestWithParam<int> {};

TEST_P(GlooWorld, FileStoreRunsCollectives) {
  TempDir dir;
  run_ranks(file_store_config(dir.path(), GetParam()), check_some_operations);
}

TEST_P(GlooWorld, TcpStoreRunsCollectives) {
  run_ranks(tcp_store_config(testing::unused_loopback_port(), GetParam()), check_some_operations);
}

INSTANTIATE_TEST_SUITE_P(Sizes, GlooWorld, ::testing::Values(1, 2, 3, 4));

TEST(Gloo, ZeroLengthBuffersWorkForEveryOperation) {
  TempDir dir;
  run_ranks(file_store_config(dir.path(), 3), [](Communicator& comm) {
    const std::vector<size_t> zeros(comm.size(), 0);
    EXPECT_TRUE(
        comm.allreduce(flat_view(static_cast<void*>(nullptr), DType::kF32, 0), ReduceOp::kSum)
            .is_ok());
    EXPECT_TRUE(comm.allgather({}, {}).is_ok());
    EXPECT_TRUE(comm.allgatherv({}, zeros, {}).is_ok());
    EXPECT_TRUE(comm.broadcast({}, 1).is_ok());
    EXPECT_TRUE(comm.alltoallv({}, zeros, {}, zeros).is_ok());
    EXPECT_TRUE(comm.barrier().is_ok());
    // The communicator still works afterwards.
    std::vector<float> one(1, 1.0f);
    ASSERT_TRUE(comm.allreduce(flat_view(one.data(), DType::kF32, 1), ReduceOp::kSum).is_ok());
    EXPECT_EQ(one[0], 3.0f);
  });
}

TEST(Gloo, OperationsMayWaitForALatePeerUpToTheTimeout) {
  // While connecting, gloo's own timeout is a fifth of the communicator's; operations must still
  // wait the communicator's full timeout for a late peer.
  TempDir dir;
  run_ranks(file_store_config(dir.path(), 2, 1000), [](Communicator& comm) {
    if (comm.rank() == 1) std::this_thread::sleep_for(milliseconds(500));
    std::vector<float> values(1 << 20, static_cast<float>(comm.rank() + 1));
    ASSERT_TRUE(
        comm.allreduce(flat_view(values.data(), DType::kF32, static_cast<int64_t>(values.size())),
                       ReduceOp::kSum)
            .is_ok());
    EXPECT_EQ(values.front(), 3.0f);
    EXPECT_EQ(values.back(), 3.0f);
  });
}

TEST(Gloo, WorldOfTwoWithoutRendezvousIsInvalidArgument) {
  CommConfig config;
  config.world_size = 2;
  auto comm = make_gloo_communicator(config);
  ASSERT_FALSE(comm.is_ok());
  EXPECT_EQ(comm.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(comm.status().message(), "FRUGAL_STORE_PATH"));
  EXPECT_TRUE(contains(comm.status().message(), "MASTER_ADDR"));
}

TEST(Gloo, BadInterfaceNameListsTheAvailableOnes) {
  TempDir dir;
  CommConfig config = file_store_config(dir.path(), 2);
  config.iface = "frugal-nope0";
  auto comm = make_gloo_communicator(config);
  ASSERT_FALSE(comm.is_ok());
  EXPECT_EQ(comm.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(comm.status().message(), "'frugal-nope0'")) << comm.status().message();
  EXPECT_TRUE(contains(comm.status().message(), "available interfaces: "))
      << comm.status().message();
  EXPECT_TRUE(contains(comm.status().message(), "lo")) << comm.status().message();
}

TEST(Gloo, ExplicitInterfaceWorks) {
  TempDir dir;
  CommConfig config = file_store_config(dir.path(), 2);
  config.iface = "lo";
  run_ranks(config, [](Communicator& comm) { EXPECT_TRUE(comm.barrier().is_ok()); });
}

TEST(Gloo, RankThatNeverJoinsIsNamed) {
  TempDir dir;
  const CommConfig base = file_store_config(dir.path(), 4, 1000);
  std::vector<Status> results(2);
  std::vector<double> waited(2);
  std::vector<std::thread> threads;
  for (int rank : {0, 2}) {  // ranks 1 and 3 never start
    threads.emplace_back([&, rank] {
      CommConfig config = base;
      config.rank = rank;
      const auto start = SteadyClock::now();
      results[rank / 2] = make_gloo_communicator(config).status();
      waited[rank / 2] = elapsed_ms(start);
    });
  }
  for (auto& thread : threads) thread.join();
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(results[i].code(), StatusCode::kDeadlineExceeded) << results[i].to_string();
    EXPECT_TRUE(contains(results[i].message(), "rank(s) 1, 3 never joined (joined: 0, 2)"))
        << results[i].message();
    EXPECT_LT(waited[i], 3000.0);
  }
}

TEST(Gloo, RankThatNeverJoinsTheTcpStoreIsNamed) {
  const CommConfig base = tcp_store_config(testing::unused_loopback_port(), 2, 1000);
  CommConfig config = base;
  config.rank = 0;
  const auto start = SteadyClock::now();
  auto comm = make_gloo_communicator(config);
  ASSERT_FALSE(comm.is_ok());
  EXPECT_EQ(comm.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(contains(comm.status().message(), "rank(s) 1 never joined"))
      << comm.status().message();
  EXPECT_LT(elapsed_ms(start), 3000.0);
}

TEST(Gloo, ReusedStoreDirectoryIsAClearError) {
  TempDir dir;
  run_ranks(file_store_config(dir.path(), 2),
            [](Communicator& comm) { EXPECT_TRUE(comm.barrier().is_ok()); });
  CommConfig config = file_store_config(dir.path(), 2, 1000);
  auto comm = make_gloo_communicator(config);
  ASSERT_FALSE(comm.is_ok());
  EXPECT_EQ(comm.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(contains(comm.status().message(), "empty FRUGAL_STORE_PATH"));
}

// Ranks run `rounds` allreduces; `leaver` destroys its communicator after the first. The others
// must fail within the timeout, name the leaver, and fail fast afterwards.
void check_peer_leaving(const CommConfig& base, int leaver) {
  std::atomic<int> finished_first_round{0};
  std::vector<std::thread> threads;
  for (int rank = 0; rank < base.world_size; ++rank) {
    threads.emplace_back([&, rank] {
      CommConfig config = base;
      config.rank = rank;
      auto made = make_gloo_communicator(config);
      ASSERT_TRUE(made.is_ok()) << made.status().to_string();
      std::unique_ptr<Communicator> comm = std::move(made).value();
      std::vector<float> values(4096, 1.0f);
      auto view = flat_view(values.data(), DType::kF32, 4096);
      ASSERT_TRUE(comm->allreduce(view, ReduceOp::kSum).is_ok());
      ++finished_first_round;
      if (rank == leaver) {
        while (finished_first_round < base.world_size) std::this_thread::yield();
        comm.reset();
        return;
      }
      const auto start = SteadyClock::now();
      Status failed;
      for (int round = 0; round < 100 && failed.is_ok(); ++round) {
        failed = comm->allreduce(view, ReduceOp::kSum);
      }
      ASSERT_FALSE(failed.is_ok()) << "rank " << rank << " never noticed rank " << leaver;
      EXPECT_LT(elapsed_ms(start), static_cast<double>(base.timeout_ms) + 300.0);
      EXPECT_TRUE(failed.code() == StatusCode::kUnavailable ||
                  failed.code() == StatusCode::kDeadlineExceeded)
          << failed.to_string();
      EXPECT_TRUE(contains(failed.message(), "rank " + std::to_string(leaver)))
          << "rank " << rank << ": " << failed.message();

      const auto later_start = SteadyClock::now();
      const Status later = comm->barrier();
      EXPECT_EQ(later.code(), failed.code());
      EXPECT_TRUE(contains(later.message(), "failed earlier")) << later.message();
      EXPECT_TRUE(contains(later.message(), failed.message()));
      EXPECT_LT(elapsed_ms(later_start), 100.0);
    });
  }
  for (auto& thread : threads) thread.join();
}

TEST(Gloo, PeerThatLeavesIsNamedByTheOthers) {
  TempDir dir;
  check_peer_leaving(file_store_config(dir.path(), 3, 2000), 1);
}

TEST(Gloo, PeerThatLeavesIsNamedInAWorldOfFour) {
  TempDir dir;
  check_peer_leaving(file_store_config(dir.path(), 4, 2000), 2);
}

TEST(Gloo, TcpStoreHostThatLeavesIsNamedByTheOthers) {
  // Rank 0 takes the store down with it; the others must still fail fast and name it.
  check_peer_leaving(tcp_store_config(testing::unused_loopback_port(), 3, 2000), 0);
}

TEST(Gloo, TcpStorePeerThatLeavesIsNamedByTheOthers) {
  check_peer_leaving(tcp_store_config(testing::unused_loopback_port(), 3, 2000), 2);
}

TEST(Gloo, HungPeerTimesOutAndTheFaultNoteReachesIt) {
  TempDir dir;
  const CommConfig base = file_store_config(dir.path(), 3, 1000);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 3; ++rank) {
    threads.emplace_back([&, rank] {
      CommConfig config = base;
      config.rank = rank;
      auto comm = make_gloo_communicator(config);
      ASSERT_TRUE(comm.is_ok()) << comm.status().to_string();
      if (rank == 2) {
        // Busy elsewhere for longer than the timeout, then late for the collective.
        std::this_thread::sleep_for(milliseconds(2000));
        const Status late = (*comm)->barrier();
        EXPECT_FALSE(late.is_ok());
        // The others timed out first; their note tells rank 2 why its peers are gone.
        EXPECT_TRUE(contains(late.message(), "timed out during allreduce #1")) << late.message();
        return;
      }
      std::vector<float> values(16, 1.0f);
      const auto start = SteadyClock::now();
      const Status status =
          (*comm)->allreduce(flat_view(values.data(), DType::kF32, 16), ReduceOp::kSum);
      EXPECT_EQ(status.code(), StatusCode::kDeadlineExceeded) << status.to_string();
      EXPECT_TRUE(contains(status.message(), "allreduce #1 on rank " + std::to_string(rank)))
          << status.message();
      EXPECT_TRUE(contains(status.message(), "1000 ms timeout")) << status.message();
      EXPECT_GE(elapsed_ms(start), 850.0);
      EXPECT_LT(elapsed_ms(start), 1300.0);  // the timeout, fault note included
    });
  }
  for (auto& thread : threads) thread.join();
}

TEST(Gloo, InvalidArgumentsDoNotBreakTheCommunicator) {
  TempDir dir;
  run_ranks(file_store_config(dir.path(), 2), [](Communicator& comm) {
    std::vector<uint8_t> in(4), out(5);
    EXPECT_EQ(comm.allgather(bytes_of(in), bytes_of(out)).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(comm.broadcast({}, 2).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(comm.split(-1, 0).status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(comm.barrier().is_ok());
  });
}

TEST(Gloo, SplitGroupsAreOrderedByKeyAndIndependent) {
  TempDir dir;
  run_ranks(file_store_config(dir.path(), 4), [](Communicator& comm) {
    const int rank = comm.rank();
    // Colors by parity, keys reversed: in color 0 ranks {2, 0}, in color 1 ranks {3, 1}.
    auto halves = comm.split(rank % 2, -rank);
    ASSERT_TRUE(halves.is_ok()) << halves.status().to_string();
    Communicator& half = **halves;
    EXPECT_EQ(half.size(), 2);
    EXPECT_EQ(half.rank(), rank >= 2 ? 0 : 1);
    // Everyone in one group, and a group of one.
    auto everyone = comm.split(0, rank);
    auto alone = comm.split(rank, 0);
    ASSERT_TRUE(everyone.is_ok() && alone.is_ok());
    EXPECT_EQ((*alone)->size(), 1);
    EXPECT_EQ((*everyone)->rank(), rank);

    // The two children run at the same time from two threads of this rank.
    std::thread other([&] {
      for (int round = 0; round < 20; ++round) {
        std::vector<int64_t> value = {rank};
        ASSERT_TRUE((*everyone)
                        ->allreduce(flat_view(value.data(), DType::kI64, 1), ReduceOp::kSum)
                        .is_ok());
        EXPECT_EQ(value[0], 0 + 1 + 2 + 3);
      }
    });
    for (int round = 0; round < 20; ++round) {
      std::vector<int64_t> value = {rank};
      ASSERT_TRUE(half.allreduce(flat_view(value.data(), DType::kI64, 1), ReduceOp::kSum).is_ok());
      EXPECT_EQ(value[0], rank % 2 == 0 ? 0 + 2 : 1 + 3);
    }
    other.join();

    std::vector<uint8_t> mine = {static_cast<uint8_t>(rank)};
    std::vector<uint8_t> gathered(1);
    ASSERT_TRUE((*alone)->allgather(bytes_of(mine), bytes_of(gathered)).is_ok());
    EXPECT_EQ(gathered[0], rank);
    auto nested = half.split(0, 0);
    ASSERT_TRUE(nested.is_ok()) << nested.status().to_string();
    EXPECT_TRUE((*nested)->barrier().is_ok());
    EXPECT_TRUE(comm.barrier().is_ok());  // the parent is unaffected
  });
}

TEST(Gloo, SplitChildNamesWorldRanksInErrors) {
  TempDir dir;
  std::atomic<int> ready{0};
  run_ranks(file_store_config(dir.path(), 4, 2000), [&](Communicator& comm) {
    const int rank = comm.rank();
    auto made = comm.split(rank % 2, rank);  // colour 1: world ranks 1 and 3
    ASSERT_TRUE(made.is_ok()) << made.status().to_string();
    std::unique_ptr<Communicator> half = std::move(made).value();
    ++ready;
    while (ready < 4) std::this_thread::yield();
    if (rank == 3) {
      half.reset();
      return;
    }
    if (rank != 1) return;
    Status failed;
    for (int round = 0; round < 100 && failed.is_ok(); ++round) failed = half->barrier();
    EXPECT_TRUE(contains(failed.message(), "rank 1 (world rank 3)")) << failed.message();
  });
}

TEST(GlooErrors, PeerDirectoryMapsEndpointsAndUniqueHosts) {
  PeerDirectory directory;
  directory.add_endpoint("[127.0.0.1]:12200", 1);
  directory.add_host("10.0.0.2", 2);
  directory.add_host("10.0.0.3", 3);
  directory.add_host("10.0.0.3", 4);
  EXPECT_EQ(directory.find_rank("Connection closed by peer [127.0.0.1]:12200"), 1);
  EXPECT_EQ(directory.find_rank("Read error [10.0.0.2]:5: Connection reset by peer"), 2);
  EXPECT_EQ(directory.find_rank("Read error [10.0.0.3]:5"), std::nullopt);  // two ranks there
  EXPECT_EQ(directory.find_rank("Timed out waiting 1000ms"), std::nullopt);
}

TEST(GlooErrors, SourceLocationsAreStripped) {
  EXPECT_EQ(strip_gloo_source_location(
                "[./gloo/transport/tcp/pair.cc:598] Connection closed by peer [127.0.0.1]:1"),
            "Connection closed by peer [127.0.0.1]:1");
  EXPECT_EQ(strip_gloo_source_location("[enforce fail at ./gloo/allgatherv.cc:105] a == b. x"),
            "a == b. x");
  EXPECT_EQ(strip_gloo_source_location("[./gloo/rendezvous/file_store.cc:147] "
                                       "[./gloo/rendezvous/file_store.cc:147] Wait timeout"),
            "Wait timeout");
  EXPECT_EQ(strip_gloo_source_location("no location [::1]:80"), "no location [::1]:80");
}

TEST(GlooErrors, ExceptionsAreClassified) {
  PeerDirectory peers;
  peers.add_endpoint("[::1]:7", 3);
  auto classify = [&](auto exception) {
    return classify_gloo_exception(std::make_exception_ptr(exception), peers);
  };
  GlooFailure closed = classify(gloo::IoException("[./gloo/x.cc:1] Socket closed [::1]:7"));
  EXPECT_EQ(closed.code, StatusCode::kUnavailable);
  EXPECT_EQ(closed.detail, "Socket closed [::1]:7");
  EXPECT_EQ(closed.peer, 3);
  GlooFailure timeout = classify(gloo::IoException("Timed out waiting 5ms for recv operation"));
  EXPECT_EQ(timeout.code, StatusCode::kDeadlineExceeded);
  EXPECT_EQ(timeout.peer, std::nullopt);
  EXPECT_EQ(classify(gloo::EnforceNotMet("f.cc", 1, "a", "b")).code, StatusCode::kInternal);
  EXPECT_EQ(classify(std::runtime_error("odd")).code, StatusCode::kInternal);
  EXPECT_EQ(classify(42).code, StatusCode::kInternal);
}

}  // namespace
}  // namespace frugal::detail
