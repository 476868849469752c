// Creates communicators by backend name. Backends register here, in one table, never through
// #if chains: a build without MPI still lists "mpi" and says why it cannot be used.
// Thread-safe: all functions are free of shared mutable state.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "comm/comm_config.h"
#include "comm/communicator.h"

namespace frugal {

// The backend names, in the order they are documented: {"local", "gloo", "mpi"}.
const std::vector<std::string>& backend_names();

// Creates this process's communicator for config.backend (validated first). For "local" this
// makes a world of one rank; use make_local_group() for several ranks in one process.
// Blocks until all config.world_size ranks have joined or config.timeout_ms has passed.
Result<std::unique_ptr<Communicator>> make_communicator(const CommConfig& config);

// Creates `world_size` connected communicators of the "local" backend, one per thread-rank.
Result<std::vector<std::unique_ptr<Communicator>>> make_local_group(int world_size,
                                                                    int64_t timeout_ms);

}  // namespace frugal
