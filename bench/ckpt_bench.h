// Checkpoint benchmark behind `frugal bench ckpt`: what saving a large training state costs the
// training loop, synchronously against asynchronously (src/ckpt), all measured in one run.
//
// A synthetic transformer-like state (parameters plus Adam moments, f32, identical on every
// rank) is trained by `ranks` thread-ranks: every step is forward and backward windows of real
// CPU work, then the "optimizer" changes a few elements of every tensor, then a barrier (the
// gradient allreduce's synchronization). The same steps run three times: without checkpoints
// (the baseline), with synchronous saves and with asynchronous ones. Reported per mode: the
// training thread's stall per save (p50, p99), the mean step time against the baseline, and
// the persist throughput against the disk's sequential write + fsync bandwidth, measured by as
// many writers as ranks in the same directory before, between and after the saving modes. Then
// the newest asynchronous checkpoint is restored (on as many ranks, and resharded onto one
// more) with the page cache dropped and warm, and every restored byte is compared with the
// state at the saved step: a torn snapshot fails the benchmark.
//
// Not thread-safe (one run at a time); starts its own threads and local communicators.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace frugal::bench {

struct CkptBenchOptions {
  int64_t parameters = 100'000'000;  // f32, split into transformer-like tensors
  int moments = 2;                   // optimizer moments per parameter (Adam: 2), 0..2
  int ranks = 2;                     // thread-ranks, each with its own copy of the state
  int saves = 5;                     // saves per mode
  double forward_ms = 100;           // CPU work per step before backward_begins()
  double backward_ms = 200;          // CPU work per step before before_update()
  // Steps from one save to the next; nullopt: auto, the smallest count >= 2 whose work lasts
  // 1.5 x the persist time the disk baseline predicts, so that a save does not wait for the
  // previous one (that wait is reported apart either way).
  std::optional<int> steps_between_saves;
  std::string parent_dir = "/var/tmp";  // a fresh directory is made in it
  bool keep_files = false;              // keep that directory (and print where it is)
  int64_t chunk_bytes = int64_t{4} << 20;
  int64_t disk_write_bytes = int64_t{8} << 20;  // write(2) size of the disk baseline
  // Non-empty: a Chrome trace of every rank per mode to PREFIX.<mode>.trace.json.
  std::string trace_prefix;
};

// One mode of saving: "none" (the baseline), "sync" or "async". Per save, each component is
// the maximum over ranks (the slowest rank sets the pace after the barrier), and the stall is
// the maximum over ranks of wait + save + before_update + marks.
struct CkptModeResult {
  std::string mode;
  int steps = 0;
  std::vector<double> stall_ms;          // per save
  std::vector<double> wait_ms;           // explicit wait() for the previous save, per save
  std::vector<double> save_ms;           // in save(), per save
  std::vector<double> before_update_ms;  // in the before_update() that follows, per save
  std::vector<double> marks_ms;          // in forward_begins() + backward_begins() after it
  double stall_p50_ms = 0;
  double stall_p99_ms = 0;
  std::vector<double> step_ms;  // rank 0, barrier included
  double step_mean_ms = 0;
  double forward_ms = 0;                      // measured mean of the forward window (rank 0)
  double backward_ms = 0;                     // measured mean of the backward window (rank 0)
  std::optional<double> step_change_percent;  // vs the baseline's step_mean_ms
  // Persist: write + fsync of every rank's shard. Bytes summed over ranks (CheckpointStats);
  // per save the longest rank's time (the Checkpointer's PERSIST trace events).
  int64_t persist_bytes = 0;
  std::vector<double> persist_ms;
  double persist_p50_ms = 0;
  double persist_gbps = 0;  // persist_bytes / persist_p50_ms
  std::optional<double> persist_vs_disk;
};

// The disk baseline: each of `writers` threads writes its rank's share of the state to a file,
// concurrently, with large write(2) calls and one fsync.
struct CkptDiskResult {
  std::string when;  // "before", "between" (sync and async) or "after" the saves
  int writers = 0;
  int64_t bytes = 0;   // all writers
  double seconds = 0;  // first start to last fsync
  double gbps = 0;     // 1e9 bytes/s
};

struct CkptRestoreResult {
  int ranks = 0;
  int saved_ranks = 0;
  bool cold = true;        // the checkpoint's pages were dropped from the page cache first
  int64_t step = 0;        // restored step (checked against the last save)
  int64_t bytes = 0;       // replicated state
  int64_t bytes_read = 0;  // from the shards, all ranks
  double seconds = 0;      // restore_latest, maximum over ranks
  double gbps = 0;         // bytes / seconds
};

struct CkptBenchResult {
  CkptBenchOptions options;
  std::string dir;  // the run's directory (removed unless keep_files)
  int tensors = 0;  // entries of the state (parameters and moments)
  int64_t state_bytes = 0;
  int steps_between_saves = 0;
  bool steps_between_saves_auto = false;
  std::vector<CkptModeResult> modes;  // none, sync, async
  std::vector<CkptDiskResult> disk;   // before, between, after
  double disk_gbps = 0;               // their median: the reference of the persist
  std::vector<CkptRestoreResult> restores;
  double stall_ratio = 0;    // async stall p50 / sync save() p50
  double persist_ratio = 0;  // async persist / disk
};

inline constexpr double kCkptStallRatioTarget = 0.05;   // at most
inline constexpr double kCkptPersistRatioTarget = 0.8;  // at least

// Checks the options (ranges, and that the state fits in memory); the error names the flag and
// what is valid.
Status validate(const CkptBenchOptions& options);

// Runs the whole benchmark. `note` (may be empty) receives one-line progress messages.
Result<CkptBenchResult> run_ckpt_bench(const CkptBenchOptions& options,
                                       const std::function<void(const std::string&)>& note = {});

// Markdown: the setup, the per-mode table, the throughput table and the targets.
std::string format_markdown(const CkptBenchResult& result);
// {"run", "modes", "disk", "restores", "targets"}.
std::string format_json(const CkptBenchResult& result);

// Draws stall p50/p99 per mode and the throughputs (disk, persist, restore) from a file written
// with format_json into an SVG, with bench/plot_results.py (python3-matplotlib).
Status plot_ckpt(const std::string& json_path, const std::string& svg_path);

}  // namespace frugal::bench
