#include "comm/factory.h"

#include "comm/backends.h"
#include "comm/local_communicator.h"

namespace frugal {

const std::vector<std::string>& backend_names() {
  static const std::vector<std::string> kNames = {"local", "gloo", "mpi"};
  return kNames;
}

Result<std::unique_ptr<Communicator>> make_communicator(const CommConfig& config) {
  FRUGAL_RETURN_IF_ERROR(validate_comm_config(config));
  if (config.backend == "local") {
    if (config.world_size != 1) {
      return invalid_argument(
          "the local backend runs ranks as threads of one process; a process started with "
          "WORLD_SIZE=" +
          std::to_string(config.world_size) + " needs --backend gloo or mpi");
    }
    FRUGAL_ASSIGN_OR_RETURN(auto group, make_local_group(1, config.timeout_ms));
    return std::move(group.front());
  }
  Result<std::unique_ptr<Communicator>> made = config.backend == "gloo"
                                                   ? detail::make_gloo_communicator(config)
                                                   : detail::make_mpi_communicator(config);
  if (!made.is_ok() || !config.check_consistency) return made;
  return detail::make_checked_communicator(std::move(made).value());
}

}  // namespace frugal
