// Timeline: records Chrome-trace "complete" events (phase name, start, duration) for one rank,
// in memory, so the engine and checkpointing can show where a step's time went. Open the written
// file in chrome://tracing or https://ui.perfetto.dev. One Timeline per rank, owned by the job;
// record() is thread-safe. A disabled Timeline costs one branch per event.
#pragma once

#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/clock.h"
#include "core/status.h"

namespace frugal {

// Well-known phase names, shared by the engine, the trainer and checkpointing.
namespace phase {
inline constexpr std::string_view kQueue = "QUEUE";
inline constexpr std::string_view kCompress = "COMPRESS";
inline constexpr std::string_view kFuse = "FUSE";
inline constexpr std::string_view kComm = "COMM";
inline constexpr std::string_view kDecompress = "DECOMPRESS";
inline constexpr std::string_view kWait = "WAIT";
inline constexpr std::string_view kSnapshot = "SNAPSHOT";
inline constexpr std::string_view kPersist = "PERSIST";
// The training loop's own phases (torch/ Trainer).
inline constexpr std::string_view kForward = "FORWARD";
inline constexpr std::string_view kBackward = "BACKWARD";
inline constexpr std::string_view kOptimizer = "OPTIMIZER";
inline constexpr std::string_view kEval = "EVAL";
}  // namespace phase

struct TraceEvent {
  std::string name;    // phase, e.g. "COMM"
  std::string detail;  // free text shown in the event's args, e.g. "bucket 3, 4.0 MiB"
  int64_t start_us = 0;
  int64_t duration_us = 0;
  int lane = 0;  // a row within the rank (shown as the thread id), e.g. 0 = training thread
};

class Timeline {
 public:
  // max_events bounds memory: events past it are counted and dropped, never reallocated forever.
  Timeline(int rank, bool enabled, size_t max_events = 1 << 20);

  bool enabled() const { return enabled_; }
  int rank() const { return rank_; }

  void record(std::string_view name, int64_t start_us, int64_t duration_us, int lane = 0,
              std::string detail = {});

  std::vector<TraceEvent> events() const;
  size_t dropped() const;

  // This rank's events as a JSON array of Chrome trace events (pid = rank, tid = lane).
  std::string to_json() const;

 private:
  const int rank_;
  const bool enabled_;
  const size_t max_events_;
  mutable std::mutex mutex_;
  std::vector<TraceEvent> events_;
  size_t dropped_ = 0;
};

// Records [construction, destruction) as one event.
class ScopedTraceEvent {
 public:
  ScopedTraceEvent(Timeline* timeline, std::string_view name, int lane = 0, std::string detail = {})
      : timeline_(timeline && timeline->enabled() ? timeline : nullptr),
        name_(name),
        lane_(lane),
        detail_(std::move(detail)),
        start_us_(timeline_ ? now_us() : 0) {}
  ~ScopedTraceEvent() {
    if (timeline_)
      timeline_->record(name_, start_us_, now_us() - start_us_, lane_, std::move(detail_));
  }
  ScopedTraceEvent(const ScopedTraceEvent&) = delete;
  ScopedTraceEvent& operator=(const ScopedTraceEvent&) = delete;

 private:
  Timeline* timeline_;
  std::string_view name_;
  int lane_;
  std::string detail_;
  int64_t start_us_;
};

// Writes one Chrome trace file from the to_json() arrays of several ranks.
Status write_chrome_trace(const std::string& path, std::span<const std::string> rank_event_arrays);

}  // namespace frugal
