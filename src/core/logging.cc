#include "core/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <string>

namespace frugal {

Status init_logging(std::string_view prefix, std::string_view level) {
  spdlog::level::level_enum parsed = spdlog::level::from_str(std::string(level));
  if (parsed == spdlog::level::off && level != "off") {
    return invalid_argument("unknown log level '" + std::string(level) +
                            "'; valid: trace, debug, info, warn, error, off");
  }
  auto logger = spdlog::stderr_color_mt("frugal");
  spdlog::drop("frugal");
  logger->set_pattern(prefix.empty() ? std::string("[frugal %l] %v")
                                     : "[frugal " + std::string(prefix) + " %l] %v");
  logger->set_level(parsed);
  spdlog::set_default_logger(logger);
  return Status::ok();
}

}  // namespace frugal
