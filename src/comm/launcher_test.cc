// Multi-process behaviour: ranks started by the launcher over gloo, one killed mid-collective.
#include "comm/launcher.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "comm/testing/rank_runner.h"

namespace frugal {
namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(Launcher, AllRanksSucceed) {
  LaunchOptions options;
  options.argv = {FRUGAL_COMM_TEST_WORKER, "allreduce-loop", "3"};
  options.world_size = 3;
  options.env = {{"FRUGAL_BACKEND", "gloo"}, {"FRUGAL_TIMEOUT_MS", "20000"}};
  options.log_dir = testing::make_temp_dir("frugal-launch");
  std::vector<RankExit> exits;
  Status status = launch_local_ranks(options, &exits);
  EXPECT_TRUE(status.is_ok()) << status.to_string() << "\n"
                              << read_file(options.log_dir + "/rank0.log");
  for (const RankExit& e : exits) EXPECT_EQ(e.exit_code, 0);
  EXPECT_NE(read_file(options.log_dir + "/rank2.log").find("3 allreduces ok"), std::string::npos);
  std::filesystem::remove_all(options.log_dir);
}

TEST(Launcher, KilledRankIsNamedAndOthersFailWithinTheTimeout) {
  LaunchOptions options;
  // Rank 1 SIGKILLs itself at iteration 5 while the others are inside the collective.
  options.argv = {FRUGAL_COMM_TEST_WORKER, "die-in-loop", "1000", "1", "5"};
  options.world_size = 4;
  options.env = {{"FRUGAL_BACKEND", "gloo"}, {"FRUGAL_TIMEOUT_MS", "3000"}};
  options.grace_ms = 30'000;  // survivors must fail on their own, long before the launcher kills
  options.log_dir = testing::make_temp_dir("frugal-launch");
  std::vector<RankExit> exits;
  auto start = std::chrono::steady_clock::now();
  Status status = launch_local_ranks(options, &exits);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(status.code(), StatusCode::kUnavailable);
  EXPECT_NE(status.message().find("rank 1 was killed by signal 9"), std::string::npos)
      << status.to_string();
  EXPECT_LT(seconds, 20.0);
  ASSERT_EQ(exits.size(), 4u);
  EXPECT_EQ(exits[1].signal, 9);
  for (int r : {0, 2, 3}) {
    EXPECT_EQ(exits[r].signal, 0) << "rank " << r << " had to be killed: it hung";
    EXPECT_EQ(exits[r].exit_code, 1) << "rank " << r;
    std::string log = read_file(options.log_dir + "/rank" + std::to_string(r) + ".log");
    EXPECT_NE(log.find("worker error"), std::string::npos) << log;
    EXPECT_NE(log.find("rank 1"), std::string::npos) << "rank " << r << " log:\n" << log;
  }
  std::filesystem::remove_all(options.log_dir);
}

TEST(Launcher, BadProgramIsReported) {
  LaunchOptions options;
  options.argv = {"/nonexistent/frugal-worker"};
  options.world_size = 2;
  Status status = launch_local_ranks(options);
  EXPECT_FALSE(status.is_ok());
}

TEST(Launcher, RejectsZeroWorkers) {
  LaunchOptions options;
  options.argv = {"/bin/true"};
  options.world_size = 0;
  EXPECT_EQ(launch_local_ranks(options).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace frugal
