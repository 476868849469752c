#include "comm/comm_config.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <limits>

#include "comm/factory.h"

namespace frugal {
namespace {

Result<int64_t> parse_integer(const std::string& name, const std::string& text) {
  int64_t value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) {
    return invalid_argument("environment variable " + name + "='" + text + "' is not an integer");
  }
  return value;
}

// Reads an integer variable into `out` if it is set.
template <typename Int>
Status read_int(const EnvLookup& getenv, const std::string& name, Int& out) {
  auto text = getenv(name);
  if (!text) return Status::ok();
  FRUGAL_ASSIGN_OR_RETURN(int64_t value, parse_integer(name, *text));
  if (value < std::numeric_limits<Int>::min() || value > std::numeric_limits<Int>::max()) {
    return invalid_argument("environment variable " + name + "=" + *text + " is out of range");
  }
  out = static_cast<Int>(value);
  return Status::ok();
}

}  // namespace

EnvLookup process_env() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  };
}

bool launched_by_mpirun(const EnvLookup& getenv) {
  return getenv("OMPI_COMM_WORLD_RANK").has_value() || getenv("PMI_RANK").has_value();
}

bool launched_torchrun_style(const EnvLookup& getenv) {
  return getenv("RANK").has_value() && getenv("WORLD_SIZE").has_value();
}

Result<CommConfig> comm_config_from_env(CommConfig base, const EnvLookup& getenv,
                                        const CommFlags& given) {
  CommConfig config = std::move(base);
  if (launched_by_mpirun(getenv)) config.backend = "mpi";
  if (auto backend = getenv("FRUGAL_BACKEND")) config.backend = *backend;

  FRUGAL_RETURN_IF_ERROR(read_int(getenv, "RANK", config.rank));
  FRUGAL_RETURN_IF_ERROR(read_int(getenv, "WORLD_SIZE", config.world_size));
  // mpirun's names first, so that torchrun-style names (which a user may set) take precedence.
  FRUGAL_RETURN_IF_ERROR(read_int(getenv, "OMPI_COMM_WORLD_LOCAL_RANK", config.local_rank));
  FRUGAL_RETURN_IF_ERROR(read_int(getenv, "OMPI_COMM_WORLD_LOCAL_SIZE", config.local_size));
  FRUGAL_RETURN_IF_ERROR(read_int(getenv, "LOCAL_RANK", config.local_rank));
  FRUGAL_RETURN_IF_ERROR(read_int(getenv, "LOCAL_WORLD_SIZE", config.local_size));
  if (config.local_size < 1 &&
      (getenv("LOCAL_WORLD_SIZE") || getenv("OMPI_COMM_WORLD_LOCAL_SIZE"))) {
    return invalid_argument("LOCAL_WORLD_SIZE=" + std::to_string(config.local_size) +
                            " is invalid; it must be >= 1");
  }
  FRUGAL_RETURN_IF_ERROR(read_int(getenv, "MASTER_PORT", config.master_port));
  FRUGAL_RETURN_IF_ERROR(read_int(getenv, "FRUGAL_TIMEOUT_MS", config.timeout_ms));
  if (getenv("RANK").has_value() != getenv("WORLD_SIZE").has_value()) {
    return invalid_argument(
        "RANK and WORLD_SIZE must be set together (torchrun-style); only one of them is set");
  }

  if (auto addr = getenv("MASTER_ADDR")) config.master_addr = *addr;
  if (auto path = getenv("FRUGAL_STORE_PATH")) config.store_path = *path;
  if (auto iface = getenv("GLOO_SOCKET_IFNAME")) config.iface = *iface;
  if (auto iface = getenv("FRUGAL_SOCKET_IFNAME")) config.iface = *iface;
  if (given.timeout_ms) config.timeout_ms = *given.timeout_ms;
  if (given.iface) config.iface = *given.iface;

  if (Status s = validate_comm_config(config); !s.is_ok()) return s;
  return config;
}

Result<CommConfig> comm_config_from_env(CommConfig base) {
  return comm_config_from_env(std::move(base), process_env());
}

Status validate_comm_config(const CommConfig& config) {
  const auto& names = backend_names();
  if (std::find(names.begin(), names.end(), config.backend) == names.end()) {
    return invalid_argument("unknown backend '" + config.backend + "'; valid: local, gloo, mpi");
  }
  if (config.world_size < 1) {
    return invalid_argument("WORLD_SIZE=" + std::to_string(config.world_size) +
                            " is invalid; it must be >= 1");
  }
  if (config.rank < 0 || config.rank >= config.world_size) {
    return invalid_argument("RANK=" + std::to_string(config.rank) +
                            " is out of range for WORLD_SIZE=" + std::to_string(config.world_size) +
                            "; valid: 0.." + std::to_string(config.world_size - 1));
  }
  if (config.local_rank < 0) {
    return invalid_argument("LOCAL_RANK=" + std::to_string(config.local_rank) +
                            " is invalid; it must be >= 0");
  }
  if (config.local_size > 0 && config.local_rank >= config.local_size) {
    return invalid_argument(
        "LOCAL_RANK=" + std::to_string(config.local_rank) +
        " is out of range for LOCAL_WORLD_SIZE=" + std::to_string(config.local_size) +
        "; valid: 0.." + std::to_string(config.local_size - 1));
  }
  if (config.master_port < 1 || config.master_port > 65535) {
    return invalid_argument("MASTER_PORT=" + std::to_string(config.master_port) +
                            " is invalid; valid: 1..65535");
  }
  if (config.timeout_ms <= 0) {
    return invalid_argument("timeout of " + std::to_string(config.timeout_ms) +
                            " ms is invalid; it must be > 0 (FRUGAL_TIMEOUT_MS)");
  }
  return Status::ok();
}

}  // namespace frugal
