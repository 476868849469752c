// MetricsSink: appends one JSON object per line to a file (JSON Lines), so a run's metrics can
// be read with any JSON tool while the run is still going. Owned by the job; write() is
// thread-safe.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdio>
#include <mutex>
#include <string>

#include "core/status.h"

namespace frugal {

class MetricsSink {
 public:
  enum class Mode { kAppend, kTruncate };
  // Opens `path` (creating it) for appending, or emptied first (kTruncate: a fresh file per
  // run); an empty path makes a sink that drops everything.
  static Result<std::unique_ptr<MetricsSink>> open(const std::string& path,
                                                   Mode mode = Mode::kAppend);
  ~MetricsSink();
  MetricsSink(const MetricsSink&) = delete;
  MetricsSink& operator=(const MetricsSink&) = delete;

  // Writes `record` as one line and flushes, so a crash loses at most the line being written.
  Status write(const nlohmann::json& record);

 private:
  MetricsSink(std::FILE* file, std::string path) : file_(file), path_(std::move(path)) {}
  std::mutex mutex_;
  std::FILE* file_;
  std::string path_;
};

}  // namespace frugal
