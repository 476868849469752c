// How one `frugal` invocation becomes N ranks on this host: as a parent that starts the ranks
// (child processes for gloo, mpirun for mpi) by re-running its own command line, or as one of
// the ranks. Shared by every subcommand that takes --workers. Not thread-safe (process-level).
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "comm/comm_config.h"
#include "comm/communicator.h"

namespace frugal::cli {

// If this process must start the ranks itself (gloo without torchrun-style RANK/WORLD_SIZE, or
// mpi outside mpirun with workers > 1), starts them, waits, and returns the exit code for main.
// Otherwise returns nullopt: this process is a rank (or runs thread-ranks for "local").
std::optional<int> launch_ranks_if_parent(const std::string& backend, int workers,
                                          const std::vector<std::string>& argv);

// How the ranks of one subcommand are made.
struct RankJob {
  std::string backend = "gloo";
  int workers = 2;
  int64_t timeout_ms = 60'000;
  bool timeout_given = false;  // --timeout-ms was on the command line: it beats FRUGAL_TIMEOUT_MS
  std::string iface;           // empty: not given (FRUGAL_SOCKET_IFNAME, else loopback)
  bool check_consistency = true;  // see CommConfig::check_consistency
  // --bind-cores: each rank runs on its share of this host's CPUs (core/cpu_affinity.h), taken
  // by its place among the host's ranks (thread index, LOCAL_RANK/LOCAL_WORLD_SIZE, or mpirun's).
  bool bind_cores = false;
};

// The help text of --bind-cores, which every subcommand that takes --workers shares.
extern const char* const kBindCoresHelp;

// Runs body(comm) on every rank of `job`: as thread-ranks for "local"; otherwise this process
// starts the ranks (launch_ranks_if_parent) or is one of them. Returns the exit code for main,
// after reporting any failure with the failing rank named.
int run_job_ranks(const RankJob& job, const std::vector<std::string>& argv,
                  const std::function<Status(Communicator&)>& body);

// This process's CommConfig: the flags' defaults in `base`, overridden by the environment set by
// the launcher, torchrun or mpirun, overridden by the flags the user gave.
Result<CommConfig> rank_comm_config(CommConfig base, const CommFlags& given = {});

// Prints "frugal: error: <message>" on stderr and returns the exit code for the status:
// 2 for bad input (InvalidArgument, NotFound, OutOfRange), 130 for Aborted, 1 otherwise.
int report_error(const Status& status);

}  // namespace frugal::cli
