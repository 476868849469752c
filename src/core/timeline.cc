#include "core/timeline.h"

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstring>
#include <fstream>

namespace frugal {

Timeline::Timeline(int rank, bool enabled, size_t max_events)
    : rank_(rank), enabled_(enabled), max_events_(max_events) {}

void Timeline::record(std::string_view name, int64_t start_us, int64_t duration_us, int lane,
                      std::string detail) {
  if (!enabled_) return;
  std::lock_guard lock(mutex_);
  if (events_.size() >= max_events_) {
    ++dropped_;
    return;
  }
  events_.push_back({std::string(name), std::move(detail), start_us, duration_us, lane});
}

std::vector<TraceEvent> Timeline::events() const {
  std::lock_guard lock(mutex_);
  return events_;
}

size_t Timeline::dropped() const {
  std::lock_guard lock(mutex_);
  return dropped_;
}

std::string Timeline::to_json() const {
  nlohmann::json array = nlohmann::json::array();
  array.push_back({{"name", "process_name"},
                   {"ph", "M"},
                   {"pid", rank_},
                   {"args", {{"name", "rank " + std::to_string(rank_)}}}});
  std::lock_guard lock(mutex_);
  for (const TraceEvent& e : events_) {
    nlohmann::json event = {{"name", e.name},       {"ph", "X"},    {"ts", e.start_us},
                            {"dur", e.duration_us}, {"pid", rank_}, {"tid", e.lane}};
    if (!e.detail.empty()) event["args"] = {{"detail", e.detail}};
    array.push_back(std::move(event));
  }
  return array.dump();
}

Status write_chrome_trace(const std::string& path, std::span<const std::string> rank_event_arrays) {
  nlohmann::json all = nlohmann::json::array();
  for (const std::string& text : rank_event_arrays) {
    nlohmann::json events = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!events.is_array()) return data_loss("trace events of a rank are not a JSON array");
    for (auto& e : events) all.push_back(std::move(e));
  }
  std::ofstream out(path, std::ios::trunc);
  if (!out)
    return invalid_argument("cannot open trace file '" + path + "': " + std::strerror(errno));
  out << nlohmann::json{{"traceEvents", std::move(all)}, {"displayTimeUnit", "ms"}}.dump() << '\n';
  out.flush();
  if (!out) return unavailable("cannot write trace file '" + path + "'");
  return Status::ok();
}

}  // namespace frugal
