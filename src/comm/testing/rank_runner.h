// Test support: runs a body on every rank of an in-process group, one thread per rank, the way
// Gloo's own tests do. For "local" the ranks share a LocalWorld; for "gloo" each thread creates
// its communicator through make_communicator() with a file store in a fresh temporary directory,
// so the real rendezvous and TCP transport are exercised.
#pragma once

#include <functional>
#include <string>

#include "comm/communicator.h"

namespace frugal::testing {

// Fails the current gtest (and runs no body) if the group cannot be created.
void run_in_process_ranks(const std::string& backend, int world_size, int64_t timeout_ms,
                          const std::function<void(Communicator&)>& body);

// A loopback TCP port nobody listens on right now: bind to port 0, read the port, close.
int unused_loopback_port();

// A fresh empty directory under $TMPDIR (or /tmp), removed by the caller if wanted.
std::string make_temp_dir(const std::string& prefix);

}  // namespace frugal::testing
