// The two halves of persisting one save, run by the Checkpointer's background thread (or inline
// in synchronous mode): every rank publishes its shard; rank 0 then commits the checkpoint.
// Internal to ckpt/.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>

#include "ckpt/fault.h"
#include "ckpt/layout.h"
#include "ckpt/shard_file.h"
#include "core/status.h"

namespace frugal::ckpt {

struct ShardJob {
  std::string tmp_dir;  // the save's temporary step directory (created if missing)
  ShardHeader header;
  ConstBytes data;  // the staged bytes: replicated share, then per-rank records
  ShardContents contents;
  const std::optional<FaultPlan>* fault = nullptr;
};

// Writes shard-r-of-N.bin.tmp, fsyncs it, renames it to .bin and fsyncs the directory. On
// failure the partial file is removed and shard-r-of-N.failed records the error, so that rank 0
// aborts the commit at once instead of waiting for its timeout.
Result<ShardInfo> persist_shard(const ShardJob& job);

struct CommitJob {
  std::string root;     // the checkpoint directory
  std::string tmp_dir;  // the save's temporary step directory
  ShardHeader header;   // rank 0's (run id, step, world size, chunk bytes)
  PackedLayout replicated;
  nlohmann::json meta;
  double timeout_seconds = 300;
  int keep = 2;
  const std::optional<FaultPlan>* fault = nullptr;
};

// Rank 0: waits for every rank's shard (or a .failed marker, or the timeout), checks each
// footer against the run, step and expected share, writes MANIFEST, renames the directory into
// place, updates LATEST and removes old checkpoints. Any failure removes the temporary directory
// and leaves every committed checkpoint as it was.
Status commit_checkpoint(const CommitJob& job);

// Removes all but the newest `keep` committed checkpoints and unfinished saves of older steps.
// Each victim is first renamed to a temporary name, so a crash mid-removal leaves only a
// leftover that the next restore or collection removes, never a half-deleted checkpoint that
// still looks committed.
Status collect_garbage(const std::string& root, int keep, int64_t current_step,
                       const std::optional<FaultPlan>* fault);

}  // namespace frugal::ckpt
