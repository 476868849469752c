#include "core/metrics.h"

#include <cerrno>
#include <cstring>

namespace frugal {

Result<std::unique_ptr<MetricsSink>> MetricsSink::open(const std::string& path, Mode mode) {
  std::FILE* file = nullptr;
  if (!path.empty()) {
    file = std::fopen(path.c_str(), mode == Mode::kTruncate ? "w" : "a");
    if (file == nullptr) {
      return invalid_argument("cannot open metrics file '" + path + "': " + std::strerror(errno));
    }
  }
  return std::unique_ptr<MetricsSink>(new MetricsSink(file, path));
}

MetricsSink::~MetricsSink() {
  if (file_ != nullptr) std::fclose(file_);
}

Status MetricsSink::write(const nlohmann::json& record) {
  if (file_ == nullptr) return Status::ok();
  std::string line = record.dump();
  line += '\n';
  std::lock_guard lock(mutex_);
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
    return unavailable("cannot write metrics file '" + path_ + "': " + std::strerror(errno));
  }
  return Status::ok();
}

}  // namespace frugal
