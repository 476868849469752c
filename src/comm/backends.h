// Internal: the constructors behind make_communicator(), one per backend, plus the consistency
// decorator. Only comm/factory.cc and tests include this header.
#pragma once

#include <memory>

#include "comm/comm_config.h"
#include "comm/communicator.h"

namespace frugal::detail {

// gloo_communicator.cc: Gloo over TCP, rendezvous through a file store or Frugal's TCP store.
Result<std::unique_ptr<Communicator>> make_gloo_communicator(const CommConfig& config);

// mpi_communicator.cc when CMake found MPI, else mpi_unavailable.cc (returns Unimplemented).
// Rank and size come from MPI_COMM_WORLD; config.rank/world_size are ignored.
Result<std::unique_ptr<Communicator>> make_mpi_communicator(const CommConfig& config);
bool mpi_backend_built();

// checked_communicator.cc: before each collective, allgathers a fixed-size descriptor of the
// call (operation, sequence number, dtype, sizes, root) through `inner` and fails with a clear
// InvalidArgument naming the disagreeing ranks instead of hanging or corrupting memory.
std::unique_ptr<Communicator> make_checked_communicator(std::unique_ptr<Communicator> inner);

}  // namespace frugal::detail
