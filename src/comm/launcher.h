// Launcher: starts the N ranks of a single-host job as child processes (what `frugal train
// --workers N` does for the gloo and mpi-less paths), watches them, and never lets a job hang:
// when one rank fails, the others are stopped and the error names the failed rank. Ctrl-C
// (SIGINT) or SIGTERM to the parent stops every rank. One launch at a time per process.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/status.h"

namespace frugal {

struct LaunchOptions {
  // Program and arguments every rank runs (argv[0] is the executable path).
  std::vector<std::string> argv;
  int world_size = 2;
  // Extra environment for every rank. Each rank also gets RANK, WORLD_SIZE, LOCAL_RANK,
  // LOCAL_WORLD_SIZE and, unless set here, FRUGAL_STORE_PATH (a fresh rendezvous directory,
  // removed at the end).
  std::map<std::string, std::string> env;
  // After one rank fails, the others get this long to exit on their own (they normally fail
  // fast through their communicator) before they are sent SIGKILL.
  int64_t grace_ms = 10'000;
  // If set, rank r's stdout and stderr go to <log_dir>/rank<r>.log instead of the parent's.
  std::string log_dir;
};

struct RankExit {
  int rank = 0;
  int exit_code = 0;  // valid if signal == 0
  int signal = 0;     // the signal that killed the rank, or 0
};

// Runs the ranks to completion. OK if every rank exited with 0; otherwise an error naming the
// first rank that failed and how ("rank 2 was killed by signal 9 (Killed)"), or Aborted if
// the parent was interrupted.
Status launch_local_ranks(const LaunchOptions& options, std::vector<RankExit>* exits = nullptr);

// Path of the mpirun found when Frugal was built, or "" if it was built without MPI.
std::string mpiexec_path();

// Path of the running executable (/proc/self/exe), for re-launching oneself as the ranks.
std::string self_executable();

}  // namespace frugal
