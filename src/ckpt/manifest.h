// MANIFEST: the commit record of one checkpoint, written last by rank 0. It is data, never code:
// UTF-8 JSON followed by one line "xxh3:<16 hex digits>\n" holding the XXH3-64 of the JSON bytes.
// parse_manifest checks the hash first, then every field's type and range: the shards must be
// ranks 0..N-1 once each with names shard_file_name(r, N), their replicated ranges must tile
// [0, replicated_bytes) in rank order, and the replicated entries must tile the same space with
// bytes consistent with dtype and shape. Failures are kDataLoss naming the path and the field.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/layout.h"
#include "ckpt/shard_file.h"
#include "core/status.h"

namespace frugal::ckpt {

inline constexpr int kManifestVersion = 1;

struct ManifestShard {
  std::string file;  // shard_file_name(rank, world_size)
  int rank = 0;
  int64_t file_bytes = 0;
  uint64_t footer_hash = 0;          // must equal the shard's trailer hash
  ByteRange replicated;              // its share of the replicated space
  std::vector<ShardRecord> records;  // its per-rank state (copied from its footer)
};

struct Manifest {
  int version = kManifestVersion;
  std::string run_id;
  int64_t step = 0;
  int world_size = 1;
  int64_t chunk_bytes = 0;
  int64_t created_unix_ms = 0;
  PackedLayout replicated;            // replicated entries in order; total = replicated bytes
  std::vector<ManifestShard> shards;  // by rank
  // Free-form data the trainer records (configuration, data cursor); shown by `ckpt inspect`.
  nlohmann::json meta = nlohmann::json::object();
};

std::string encode_manifest(const Manifest& manifest);
Result<Manifest> parse_manifest(std::string_view text, std::string_view path);

}  // namespace frugal::ckpt
