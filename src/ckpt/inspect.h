// What `frugal ckpt inspect` and `frugal ckpt verify` report about a checkpoint directory.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ckpt/manifest.h"
#include "ckpt/shard_file.h"
#include "core/status.h"

namespace frugal::ckpt {

struct CheckpointListing {
  std::string path;  // the step directory
  int64_t step = 0;
  // The manifest, if it parsed and passed its hash; otherwise `problem` says why.
  std::optional<Manifest> manifest;
  std::string problem;
  int64_t total_bytes = 0;  // sum of the shard files' sizes
};

struct DirectoryListing {
  std::vector<CheckpointListing> checkpoints;  // committed step directories, oldest first
  std::vector<std::string> unfinished;         // leftovers of saves that never committed
  std::optional<std::string> latest;           // LATEST's contents, if present
};

// Lists `dir` (a checkpoint root); reads manifests only. NotFound if `dir` does not exist.
Result<DirectoryListing> list_checkpoints(const std::string& dir);

// The step directory's MANIFEST, parsed, and checked against the directory's step number.
Result<Manifest> load_manifest(const std::string& step_dir);

// Opens shard `rank` of a committed checkpoint once its header and footer match what the
// manifest committed: not missing, not of another run, step, rank or world size, and the same
// size, footer hash, replicated range and records. Data chunks are checked as they are read.
Result<std::unique_ptr<ShardReader>> open_checked_shard(const std::string& step_dir,
                                                        const Manifest& manifest, int rank);

// Full check of one committed step directory: the manifest's hash and fields, and for every
// shard its header (run id, step, rank, world size), footer, footer hash against the manifest,
// records against the manifest, and every data chunk's hash. The first failure is kDataLoss
// naming the file and byte offset.
Status verify_checkpoint(const std::string& step_dir);

// What a successful verify_checkpoint covered, for `frugal ckpt verify` to report.
struct VerifySummary {
  int64_t step = 0;
  int64_t bytes = 0;   // the shard files' sizes
  int64_t chunks = 0;  // data chunks whose hashes were checked
};
// verify_checkpoint, returning what it checked.
Result<VerifySummary> verify_checkpoint_summary(const std::string& step_dir);

}  // namespace frugal::ckpt
