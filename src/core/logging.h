// Logging through spdlog. The logger is process-wide (as every logging library's is): call
// init_logging once per process, before other threads log. Logging calls are thread-safe.
#pragma once

#include <spdlog/spdlog.h>

#include <string_view>

#include "core/status.h"

namespace frugal {

// Sets the level ("trace", "debug", "info", "warn", "error", "off") and a line prefix such as
// "rank 2" so that the interleaved output of several ranks stays readable. Logs go to stderr.
Status init_logging(std::string_view prefix, std::string_view level);

}  // namespace frugal
