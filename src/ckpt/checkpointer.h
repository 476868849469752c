// Checkpointer: one rank's side of saving partitioned, asynchronous, crash-consistent
// checkpoints (AsymCheck's design on CPU).
//
// Protocol of one save of step S on N ranks (every rank calls save() at the same step):
// 1. Snapshot. The rank's share of the replicated state (partition() of the packed space) and
//    its per-rank state are copied into a preallocated host buffer that is reused from save to
//    save. State that the next step changes before the optimizer runs (BatchNorm statistics,
//    per-rank state) is copied inside save(). State that stays untouched until the optimizer
//    (parameters, optimizer moments) is copied lazily, asymmetrically, in the next step's
//    windows: a smaller part when forward begins, the rest when backward begins, each part sized
//    from the measured length of that window and the measured copy bandwidth. before_update()
//    waits for whatever is left before the optimizer touches the parameters. Synchronous mode
//    instead copies, writes and fsyncs everything inside save() (the baseline).
// 2. Persist, on the background thread: DIR/step-S.tmp-<run>/shard-r-of-N.bin.tmp is written in
//    large sequential writes with a hash per chunk, fsynced, renamed to .bin, and the directory
//    fsynced. A failure writes shard-r-of-N.failed naming the error, so rank 0 aborts at once.
// 3. Commit, by rank 0's background thread: it waits (up to commit_timeout) for every rank's
//    shard, checks each footer, writes MANIFEST durably, renames the directory to step-S and
//    fsyncs DIR, updates LATEST durably, and removes all but the newest `keep` checkpoints. A
//    failure or timeout removes the temporary directory: training goes on, nothing committed is
//    touched. Ranks never exchange messages about checkpoints, so a save cannot deadlock training.
// At most one save is in flight: a save() while the previous one persists waits for it (that
// wait counts as stall).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ckpt/fault.h"
#include "ckpt/layout.h"
#include "core/status.h"
#include "core/timeline.h"

namespace frugal::ckpt {

struct CheckpointerOptions {
  std::string dir;
  std::string run_id;  // the same on every rank of a job; <= kMaxRunIdLength characters
  int keep = 2;        // committed checkpoints kept (>= 1)
  int64_t chunk_bytes = int64_t{4} << 20;
  bool async = true;  // false: save() copies, writes and fsyncs before it returns
  // async only. true: stable state is copied in the next step's windows (AsymCheck); false:
  // everything is copied inside save() and only persisting is in the background (CheckFreq).
  bool lazy = true;
  double commit_timeout_seconds = 300;
  std::optional<FaultPlan> fault;
  nlohmann::json meta = nlohmann::json::object();  // written into every manifest
};

// Where one piece of state lives while a save copies it. `data` must stay valid and, when
// `stable_until_update`, unchanged until before_update() returns.
struct StateSource {
  EntryInfo info;
  Sharing sharing = Sharing::kReplicated;
  const std::byte* data = nullptr;
  bool stable_until_update = true;
};

struct CheckpointStats {
  int64_t saves_started = 0, saves_committed = 0, saves_failed = 0;  // failed: rank 0's view
  std::vector<double> stall_seconds;  // per save: training-thread time blocked by it
  double last_persist_seconds = 0;    // write + fsync of this rank's shard
  int64_t last_shard_bytes = 0;
  std::string last_error;
};

class Checkpointer {
 public:
  static Result<std::unique_ptr<Checkpointer>> create(int rank, int world_size,
                                                      CheckpointerOptions options,
                                                      Timeline* timeline = nullptr);
  ~Checkpointer();  // waits for the save in flight
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  // Starts a save of `step`. The replicated sources must be the same (names, order, sizes) on
  // every rank. `meta` is merged into the manifest's meta (e.g. the data cursor).
  Status save(int64_t step, std::vector<StateSource> sources, nlohmann::json meta = {});

  // Allocates (and touches) the host buffer that saves of these sources need, so that the first
  // save does not stall on page faults. Optional; call before training starts.
  void prepare(const std::vector<StateSource>& sources);

  // Training-loop marks that open the snapshot windows of the next step.
  void forward_begins();
  void backward_begins();
  // Blocks until the snapshot of the last save is complete. Call before the optimizer changes
  // any stable source.
  void before_update();
  // Blocks until the save in flight (if any) is persisted and, on rank 0, committed or aborted.
  void wait();

  // Whether a fault plan fires kStepEnd here (kills the process).
  void step_ended(int64_t step);

  CheckpointStats stats() const;
  const CheckpointerOptions& options() const;

 private:
  struct Impl;
  explicit Checkpointer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A fresh random run id (32 hex digits), for rank 0 to broadcast.
std::string make_run_id();

}  // namespace frugal::ckpt
