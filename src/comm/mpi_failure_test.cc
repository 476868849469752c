// Failure behaviour of the "mpi" backend across processes, driven from outside mpirun: each test
// starts `mpirun -np 3 comm_mpi_test` on one MpiFailureMode test, with an environment variable
// that makes one rank die or come late, and checks what the job as a whole does: it ends in
// bounded time, fails, and says which rank was at fault.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace {

#ifndef FRUGAL_MPIRUN
#error "FRUGAL_MPIRUN must name scripts/mpirun"
#endif
#ifndef FRUGAL_COMM_MPI_TEST
#error "FRUGAL_COMM_MPI_TEST must name the comm_mpi_test binary"
#endif

// A job that takes longer than this has hung; `timeout` ends it so the test reports instead.
constexpr int kJobLimitSeconds = 120;
// What "does not hang" means here: the job ends well before any collective timeout would.
constexpr double kExpectedEndSeconds = 60.0;

struct JobResult {
  int exit_code = -1;  // of mpirun; 124 if `timeout` had to end it
  double seconds = 0.0;
  std::string output;  // stdout and stderr of every rank and of mpirun
};

// Runs comm_mpi_test under mpirun with `np` ranks on the tests matching `filter`, with
// `environment` ("NAME=value ...") exported to every rank.
JobResult run_mpi_job(int np, const std::string& filter, const std::string& environment) {
  const std::string command =
      "env " + environment + " timeout -k 5 " + std::to_string(kJobLimitSeconds) +
      " '" FRUGAL_MPIRUN "' -np " + std::to_string(np) +
      " --oversubscribe '" FRUGAL_COMM_MPI_TEST "' --gtest_filter=" + filter + " 2>&1";
  JobResult result;
  const auto start = std::chrono::steady_clock::now();
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    result.output = "popen failed for: " + command;
    return result;
  }
  char buffer[4096];
  size_t n = 0;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.output.append(buffer, n);
  const int status = pclose(pipe);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(MpiFailure, AssertionFailingOnOneRankFailsTheJob) {
  const JobResult job =
      run_mpi_job(3, "MpiFailureMode.AssertionFailsOnOneRank", "FRUGAL_TEST_FAIL_RANK=2");
  SCOPED_TRACE("mpirun output:\n" + job.output);
  EXPECT_NE(job.exit_code, 0);
  EXPECT_NE(job.exit_code, 124) << "the job hung until `timeout` ended it";
  EXPECT_LT(job.seconds, kExpectedEndSeconds);
  // Rank 2 prints its own failure, rank 0 lists it, and mpirun names the failing process
  // ("The first process to do so was: Process name: [[jobid,1],2] Exit code: 1").
  EXPECT_TRUE(contains(job.output, "[rank 2]"));
  EXPECT_TRUE(contains(job.output, "deliberate failure on rank 2"));
  EXPECT_TRUE(contains(job.output, "comm_mpi_test: rank 2 had failures"));
  EXPECT_TRUE(contains(job.output, ",1],2]"));
}

TEST(MpiFailure, KilledRankEndsTheJobAndIsNamed) {
  const JobResult job =
      run_mpi_job(3, "MpiFailureMode.RankKilledMidCollective", "FRUGAL_TEST_KILL_RANK=1");
  SCOPED_TRACE("mpirun output:\n" + job.output);
  EXPECT_NE(job.exit_code, 0);
  EXPECT_NE(job.exit_code, 124) << "the job hung until `timeout` ended it";
  EXPECT_LT(job.seconds, kExpectedEndSeconds);
  EXPECT_TRUE(contains(job.output, "frugal-kill-test: rank 1 sends itself SIGKILL"));
  // mpirun names the dead rank: "mpirun noticed that process rank 1 with PID ... on node ...
  // exited on signal 9 (Killed)."
  EXPECT_TRUE(contains(job.output, "process rank 1"));
  EXPECT_TRUE(contains(job.output, "signal 9"));
}

TEST(MpiFailure, LateRankMakesTheOthersTimeOut) {
  const JobResult job = run_mpi_job(3, "MpiFailureMode.LateRankMakesTheOthersTimeOut",
                                    "FRUGAL_TEST_DELAY_RANK=1 FRUGAL_TEST_DELAY_MS=5000");
  SCOPED_TRACE("mpirun output:\n" + job.output);
  EXPECT_NE(job.exit_code, 124) << "the job hung until `timeout` ended it";
  EXPECT_LT(job.seconds, kExpectedEndSeconds);
  for (int rank : {0, 2}) {
    EXPECT_TRUE(contains(job.output, "frugal-timeout-test: rank " + std::to_string(rank) +
                                         ": DeadlineExceeded after"))
        << "rank " << rank;
    EXPECT_TRUE(contains(job.output, "frugal-timeout-test: rank " + std::to_string(rank) +
                                         ": later calls fail fast"))
        << "rank " << rank;
  }
  // Ranks 0 and 2 skip MPI_Finalize (the abandoned allreduce cannot be cancelled) and say so.
  EXPECT_TRUE(contains(job.output, "exiting without MPI_Finalize"));
  // No rank's assertions failed (rank 0 prints gtest's summary, others prefix their failures).
  EXPECT_FALSE(contains(job.output, "[  FAILED  ]"));
}

}  // namespace
