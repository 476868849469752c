// Restore: collective loading of the newest valid checkpoint, resharded to the current world.
//
// Rank 0 removes leftovers of unfinished saves, then tries committed step directories newest
// first (LATEST is only a hint): the manifest must parse and pass its hash, every shard's header
// and footer must match it. Every rank then reads its 1/M share of the replicated space from
// the shards that overlap it, checking each chunk's hash, and an allgatherv assembles the whole
// space on every rank. Per-rank state: with the same world size each rank takes its own; with a
// different one, f32 state present on every saved rank becomes the mean over the saved ranks on
// every new rank (so error feedback keeps its average residual), and anything else is dropped
// with a warning. If any rank finds corruption, all ranks move on to the next older checkpoint.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ckpt/manifest.h"
#include "comm/communicator.h"
#include "core/status.h"

namespace frugal::ckpt {

struct RestoredState {
  std::string path;  // the step directory
  Manifest manifest;
  std::vector<std::byte> replicated;  // manifest.replicated.total bytes
  struct Blob {
    EntryInfo info;
    std::vector<std::byte> data;
  };
  std::map<std::string, Blob> per_rank;  // this rank's
  std::vector<std::string> warnings;     // checkpoints skipped, state dropped
  double seconds = 0;                    // discover + read + verify + reshard
  int64_t bytes_read = 0;                // by this rank
};

// Collective. nullopt when `dir` holds no valid checkpoint (or does not exist).
Result<std::optional<RestoredState>> restore_latest(Communicator& comm, const std::string& dir);

// Just the choice rank 0 makes (no collective): the newest committed checkpoint whose manifest
// and shard footers verify, after removing leftovers when `clean` is set. Warnings collect why
// newer ones were skipped.
Result<std::optional<std::string>> find_latest_valid(const std::string& dir, bool clean,
                                                     std::vector<std::string>* warnings);
// The same, among checkpoints of steps before `before_step`.
Result<std::optional<std::string>> find_latest_valid_before(const std::string& dir, bool clean,
                                                            int64_t before_step,
                                                            std::vector<std::string>* warnings);

}  // namespace frugal::ckpt
