// The "mpi" backend of a build in which CMake found no MPI: the backend name stays known (the
// factory lists it), and asking for it explains how to get it.
#include "comm/backends.h"

namespace frugal::detail {

Result<std::unique_ptr<Communicator>> make_mpi_communicator(const CommConfig& /*config*/) {
  return unimplemented(
      "this build of frugal has no MPI backend: install libopenmpi-dev and re-run scripts/setup");
}

bool mpi_backend_built() { return false; }

}  // namespace frugal::detail
