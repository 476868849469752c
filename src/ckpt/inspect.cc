#include "ckpt/inspect.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>

#include "ckpt/files.h"
#include "ckpt/files_internal.h"
#include "ckpt/shard_file.h"

namespace frugal::ckpt {
namespace {

// The footer starts with u64 data bytes, i64 replicated lo and hi, u32 record count.
constexpr int64_t kFooterReplicatedOffset = 8;
constexpr int64_t kFooterRecordsOffset = 28;
// The trailer is u64 footer bytes, then the footer hash.
constexpr int64_t kTrailerHashOffset = 8;

// NotFound if `dir` does not exist, InvalidArgument if it is not a directory.
Status check_is_directory(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT) return not_found(dir + ": no such directory");
    return errno_status(dir, "cannot stat", errno);
  }
  if (!S_ISDIR(st.st_mode)) return invalid_argument(dir + ": not a directory");
  return Status::ok();
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// The sizes of the step directory's shard files, whether or not the manifest lists them.
int64_t shard_files_bytes(const std::string& step_dir) {
  Result<std::vector<std::string>> names = list_directory(step_dir);
  if (!names.is_ok()) return 0;
  int64_t total = 0;
  for (const std::string& name : names.value()) {
    struct stat st {};
    if (name.starts_with("shard-") && name.ends_with(".bin") &&
        ::stat(join_path(step_dir, name).c_str(), &st) == 0) {
      total += static_cast<int64_t>(st.st_size);
    }
  }
  return total;
}

CheckpointListing describe_checkpoint(const std::string& path, int64_t step) {
  CheckpointListing listing;
  listing.path = path;
  listing.step = step;
  listing.total_bytes = shard_files_bytes(path);
  Result<Manifest> manifest = load_manifest(path);
  if (manifest.is_ok()) {
    listing.manifest = std::move(manifest).value();
  } else {
    listing.problem = manifest.status().message();
  }
  return listing;
}

bool same_entry(const EntryInfo& a, const EntryInfo& b) {
  return a.name == b.name && a.dtype == b.dtype && a.shape == b.shape && a.bytes == b.bytes;
}

bool same_records(const std::vector<ShardRecord>& a, const std::vector<ShardRecord>& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](const auto& x, const auto& y) {
    return x.data_offset == y.data_offset && same_entry(x.info, y.info);
  });
}

std::string describe_identity(const std::string& run_id, int64_t step, int rank, int world) {
  return "run '" + run_id + "' step " + std::to_string(step) + " rank " + std::to_string(rank) +
         " of " + std::to_string(world);
}

// The header names the run, step, rank and world size the manifest expects; the offset of the
// first field that differs locates the problem.
Status check_shard_identity(const std::string& path, const ShardHeader& header,
                            const Manifest& manifest, int rank) {
  int64_t offset = -1;
  if (header.run_id != manifest.run_id) {
    offset = kShardRunIdOffset;
  } else if (header.step != manifest.step) {
    offset = kShardStepOffset;
  } else if (header.rank != rank) {
    offset = kShardRankOffset;
  } else if (header.world_size != manifest.world_size) {
    offset = kShardWorldSizeOffset;
  }
  if (offset >= 0) {
    return data_loss(path + ": shard from another run or step: its header says " +
                     describe_identity(header.run_id, header.step, header.rank, header.world_size) +
                     ", the manifest expects " +
                     describe_identity(manifest.run_id, manifest.step, rank, manifest.world_size) +
                     " at byte offset " + std::to_string(offset));
  }
  if (header.chunk_bytes != manifest.chunk_bytes) {
    return data_loss(path + ": chunk bytes " + std::to_string(header.chunk_bytes) +
                     " differs from the manifest's " + std::to_string(manifest.chunk_bytes) +
                     " at byte offset " + std::to_string(kShardChunkBytesOffset));
  }
  return Status::ok();
}

// The shard's size, footer hash and footer contents against what the manifest recorded.
Status check_shard_against_manifest(const std::string& path, const ShardInfo& info,
                                    const ManifestShard& expected) {
  const auto at = [](int64_t offset) { return " at byte offset " + std::to_string(offset); };
  if (info.file_bytes != expected.file_bytes) {
    return data_loss(path + ": the file is " + std::to_string(info.file_bytes) +
                     " bytes, the manifest says " + std::to_string(expected.file_bytes) +
                     at(std::min(info.file_bytes, expected.file_bytes)));
  }
  if (info.footer_hash != expected.footer_hash) {
    return data_loss(path + ": footer hash differs from the manifest's" +
                     at(info.file_bytes - kShardTrailerBytes + kTrailerHashOffset));
  }
  const int64_t footer_offset = kShardHeaderBytes + info.data_bytes;
  if (info.contents.replicated != expected.replicated) {
    return data_loss(path + ": replicated range differs from the manifest's" +
                     at(footer_offset + kFooterReplicatedOffset));
  }
  if (!same_records(info.contents.records, expected.records)) {
    return data_loss(path + ": records differ from the manifest's" +
                     at(footer_offset + kFooterRecordsOffset));
  }
  return Status::ok();
}

// Everything about one shard file, ending with every data chunk's hash.
Result<int64_t> verify_shard(const std::string& step_dir, const Manifest& manifest, int rank) {
  FRUGAL_ASSIGN_OR_RETURN(auto reader, open_checked_shard(step_dir, manifest, rank));
  FRUGAL_RETURN_IF_ERROR(reader->verify_all());
  return static_cast<int64_t>(reader->info().chunk_hashes.size());
}

}  // namespace

Result<Manifest> load_manifest(const std::string& step_dir) {
  const std::optional<int64_t> step = parse_step_dir_name(base_name(step_dir));
  const std::string path = join_path(step_dir, kManifestName);
  Result<std::string> text = read_small_file(path);
  // A committed directory without a readable manifest has lost data.
  if (!text.is_ok()) return data_loss(text.status().message());
  FRUGAL_ASSIGN_OR_RETURN(Manifest manifest, parse_manifest(text.value(), path));
  if (step && manifest.step != *step) {
    return data_loss(path + ": field 'step' is " + std::to_string(manifest.step) +
                     ", but the directory is " + base_name(step_dir));
  }
  return manifest;
}

Result<std::unique_ptr<ShardReader>> open_checked_shard(const std::string& step_dir,
                                                        const Manifest& manifest, int rank) {
  const ManifestShard& expected = manifest.shards[static_cast<size_t>(rank)];
  const std::string path = join_path(step_dir, expected.file);
  Result<ShardInfo> info = read_shard_info(path);
  if (!info.is_ok()) {
    if (info.status().code() != StatusCode::kNotFound) return info.status();
    return data_loss(path + ": missing shard file (the manifest lists it)");
  }
  FRUGAL_RETURN_IF_ERROR(check_shard_identity(path, info->header, manifest, rank));
  FRUGAL_RETURN_IF_ERROR(check_shard_against_manifest(path, info.value(), expected));
  return ShardReader::open(path, std::move(info).value());
}

Result<DirectoryListing> list_checkpoints(const std::string& dir) {
  FRUGAL_RETURN_IF_ERROR(check_is_directory(dir));
  FRUGAL_ASSIGN_OR_RETURN(std::vector<std::string> names, list_directory(dir));
  DirectoryListing listing;
  for (const std::string& name : names) {
    const std::string path = join_path(dir, name);
    if (std::optional<int64_t> step = parse_step_dir_name(name); step && is_directory(path)) {
      listing.checkpoints.push_back(describe_checkpoint(path, *step));
    } else if (is_tmp_step_dir_name(name)) {
      listing.unfinished.push_back(path);
    }
  }
  std::stable_sort(listing.checkpoints.begin(), listing.checkpoints.end(),
                   [](const auto& a, const auto& b) { return a.step < b.step; });
  if (Result<std::string> latest = read_small_file(join_path(dir, kLatestName), 4096);
      latest.is_ok()) {
    std::string text = latest.value();
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    listing.latest = text;
  }
  return listing;
}

Result<VerifySummary> verify_checkpoint_summary(const std::string& step_dir) {
  FRUGAL_RETURN_IF_ERROR(check_is_directory(step_dir));
  FRUGAL_ASSIGN_OR_RETURN(Manifest manifest, load_manifest(step_dir));
  VerifySummary summary;
  summary.step = manifest.step;
  for (int rank = 0; rank < manifest.world_size; ++rank) {
    FRUGAL_ASSIGN_OR_RETURN(int64_t chunks, verify_shard(step_dir, manifest, rank));
    summary.chunks += chunks;
    summary.bytes += manifest.shards[static_cast<size_t>(rank)].file_bytes;
  }
  return summary;
}

Status verify_checkpoint(const std::string& step_dir) {
  return verify_checkpoint_summary(step_dir).status();
}

}  // namespace frugal::ckpt
