// CommConfig: everything needed to create a Communicator, and how it is read from the
// environment (torchrun-style variables, or mpirun's). This is the only place in Frugal that
// reads the environment for communication settings. Plain value; thread-compatible.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "core/status.h"

namespace frugal {

struct CommConfig {
  // Backend name: "local", "gloo" or "mpi".
  std::string backend = "gloo";

  // This process's rank and the number of ranks. For "mpi" both come from MPI itself.
  int rank = 0;
  int world_size = 1;
  // Rank within this host and the number of ranks on it (LOCAL_RANK, LOCAL_WORLD_SIZE; under
  // mpirun OMPI_COMM_WORLD_LOCAL_RANK/SIZE). Only --bind-cores uses them; local_size 0: not set.
  int local_rank = 0;
  int local_size = 0;

  // Rendezvous for "gloo". If master_addr is set, rank 0 hosts a TCP store on
  // master_addr:master_port and the others connect to it (many hosts). Otherwise the ranks meet
  // through a file store in store_path (one host, or a shared file system).
  std::string master_addr;
  int master_port = 29500;
  std::string store_path;

  // Network interface (e.g. "eth0", "veth3") or host name/address Gloo binds to. Empty: with a
  // file store, 127.0.0.1; with a TCP store, the local address this host uses to reach
  // master_addr. An interface is needed when ranks live in separate network namespaces.
  std::string iface;
  std::string hostname;

  // Every operation (and the rendezvous) fails with an error after this long without progress.
  int64_t timeout_ms = 60'000;

  // Before each collective, exchange a small descriptor (operation, dtype, sizes) so that ranks
  // that disagree get a clear error instead of a timeout or garbage. Costs one small allgather
  // per collective on gloo and mpi; the local backend always checks, for free.
  bool check_consistency = true;
};

// Settings the command line gave explicitly (--timeout-ms, --iface). They beat the environment,
// as a flag beats an exported variable in most tools: `--iface eth1` is what the user asked for,
// even where FRUGAL_SOCKET_IFNAME (set by bench/cluster.sh, say) names another interface. The
// backend is not here: under mpirun it must be mpi whatever the flag's default says.
struct CommFlags {
  std::optional<int64_t> timeout_ms = std::nullopt;
  std::optional<std::string> iface = std::nullopt;
};

// Reads RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT (torchrun),
// FRUGAL_STORE_PATH, FRUGAL_SOCKET_IFNAME (or GLOO_SOCKET_IFNAME), FRUGAL_TIMEOUT_MS and
// FRUGAL_BACKEND over the defaults in `base`, then applies `given`. Under mpirun
// (OMPI_COMM_WORLD_RANK is set) the backend defaults to "mpi". `getenv` is injectable for tests.
// Returns InvalidArgument naming the variable for bad values, e.g. RANK >= WORLD_SIZE or a port
// outside 1..65535.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
Result<CommConfig> comm_config_from_env(CommConfig base, const EnvLookup& getenv,
                                        const CommFlags& given = {});
Result<CommConfig> comm_config_from_env(CommConfig base);  // the process environment

// True if this process was started by mpirun, or with torchrun-style RANK/WORLD_SIZE.
bool launched_by_mpirun(const EnvLookup& getenv);
bool launched_torchrun_style(const EnvLookup& getenv);
EnvLookup process_env();

// Checks ranges and combinations (rank < world_size, port range, timeout > 0, known backend).
Status validate_comm_config(const CommConfig& config);

}  // namespace frugal
