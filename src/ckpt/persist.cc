#include "ckpt/persist.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <thread>

#include "ckpt/files.h"
#include "ckpt/manifest.h"
#include "core/clock.h"

namespace frugal::ckpt {
namespace {

constexpr int64_t kWritePieceBytes = int64_t{64} << 20;  // between fault checkpoints
constexpr std::string_view kFailedSuffix = ".failed";

void fire(const ShardJob& job, FaultPhase phase) {
  maybe_inject_fault(*job.fault, phase, job.header.rank, job.header.step);
}

bool exists(const std::string& path) {
  std::error_code error;
  return std::filesystem::exists(path, error);
}

Result<ShardInfo> write_shard(const ShardJob& job, const std::string& tmp_path) {
  FRUGAL_ASSIGN_OR_RETURN(auto writer, ShardWriter::create(tmp_path, job.header));
  const int64_t total = static_cast<int64_t>(job.data.size());
  for (int64_t done = 0; done < total;) {
    const int64_t piece = std::min(kWritePieceBytes, total - done);
    FRUGAL_RETURN_IF_ERROR(
        writer->append(job.data.subspan(static_cast<size_t>(done), static_cast<size_t>(piece))));
    done += piece;
    if (done * 2 >= total && (done - piece) * 2 < total) fire(job, FaultPhase::kMidWrite);
  }
  if (total == 0) fire(job, FaultPhase::kMidWrite);
  return writer->finish(job.contents);
}

}  // namespace

Result<ShardInfo> persist_shard(const ShardJob& job) {
  fire(job, FaultPhase::kHang);
  const std::string name = shard_file_name(job.header.rank, job.header.world_size);
  const std::string path = join_path(job.tmp_dir, name);
  const std::string tmp_path = path + ".tmp";
  Status status = make_directories(job.tmp_dir);
  Result<ShardInfo> info = status.is_ok() ? write_shard(job, tmp_path) : Result<ShardInfo>(status);
  if (info.is_ok()) {
    fire(job, FaultPhase::kAfterFsync);
    status = rename_durably(tmp_path, path);
    if (status.is_ok()) return info;
  } else {
    status = info.status();
  }
  (void)remove_tree(tmp_path);
  // Best effort: if even this fails (the disk is full), rank 0 falls back on its timeout.
  (void)write_file_atomically(path + std::string(kFailedSuffix), status.to_string());
  return status;
}

namespace {

// Waits until every shard is published; fails at once on a .failed marker.
Status wait_for_shards(const CommitJob& job) {
  const int world = job.header.world_size;
  const int64_t deadline = now_us() + static_cast<int64_t>(job.timeout_seconds * 1e6);
  auto pause = std::chrono::milliseconds(2);
  for (;;) {
    int ready = 0;
    for (int r = 0; r < world; ++r) {
      const std::string path = join_path(job.tmp_dir, shard_file_name(r, world));
      if (exists(path)) {
        ++ready;
      } else if (exists(path + std::string(kFailedSuffix))) {
        auto why = read_small_file(path + std::string(kFailedSuffix), 4096);
        return aborted("rank " + std::to_string(r) + " could not write its shard: " +
                       (why.is_ok() ? why.value() : std::string("(reason unreadable)")));
      }
    }
    if (ready == world) return Status::ok();
    if (now_us() > deadline) {
      return deadline_exceeded(std::to_string(world - ready) + " of " + std::to_string(world) +
                               " shards did not arrive within " +
                               std::to_string(job.timeout_seconds) + " s");
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(50));
  }
}

// Reads every shard's footer and checks that it belongs to this save.
Result<Manifest> build_manifest(const CommitJob& job) {
  Manifest manifest;
  manifest.run_id = job.header.run_id;
  manifest.step = job.header.step;
  manifest.world_size = job.header.world_size;
  manifest.chunk_bytes = job.header.chunk_bytes;
  manifest.created_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
  manifest.replicated = job.replicated;
  manifest.meta = job.meta;
  for (int r = 0; r < job.header.world_size; ++r) {
    const std::string file = shard_file_name(r, job.header.world_size);
    FRUGAL_ASSIGN_OR_RETURN(ShardInfo info, read_shard_info(join_path(job.tmp_dir, file)));
    const ShardHeader& h = info.header;
    if (h.run_id != job.header.run_id || h.step != job.header.step || h.rank != r ||
        h.world_size != job.header.world_size || h.chunk_bytes != job.header.chunk_bytes) {
      return data_loss(file + ": belongs to run " + h.run_id + " step " + std::to_string(h.step) +
                       " rank " + std::to_string(h.rank) + " of " + std::to_string(h.world_size) +
                       ", not to this save");
    }
    const ByteRange expected =
        partition(job.replicated.total, r, job.header.world_size, job.header.chunk_bytes);
    if (info.contents.replicated != expected) {
      return data_loss(file + ": holds replicated bytes [" +
                       std::to_string(info.contents.replicated.lo) + ", " +
                       std::to_string(info.contents.replicated.hi) + "), expected [" +
                       std::to_string(expected.lo) + ", " + std::to_string(expected.hi) +
                       "): the ranks disagree on the state's layout");
    }
    manifest.shards.push_back({file, r, info.file_bytes, info.footer_hash, info.contents.replicated,
                               info.contents.records});
  }
  return manifest;
}

void fire(const CommitJob& job, FaultPhase phase) {
  maybe_inject_fault(*job.fault, phase, 0, job.header.step);
}

// MANIFEST, durably. The manifest fault point tears the write of MANIFEST.tmp before dying.
Status write_manifest(const CommitJob& job, const std::string& text) {
  const std::string path = join_path(job.tmp_dir, kManifestName);
  if (*job.fault && (*job.fault)->phase == FaultPhase::kManifest) {
    (void)write_file_atomically(path + ".tmp.torn", text.substr(0, text.size() / 2));
    fire(job, FaultPhase::kManifest);
  }
  return write_file_atomically(path, text);
}

// Renames the finished directory into place. A committed directory of the same step (one that a
// restore skipped as invalid) is first moved aside as a leftover, never deleted before the new
// one is in place.
Status publish_directory(const CommitJob& job, const std::string& final_dir) {
  if (!exists(final_dir)) return rename_durably(job.tmp_dir, final_dir);
  const std::string aside =
      join_path(job.root, tmp_step_dir_name(job.header.step, "replaced-" + job.header.run_id));
  FRUGAL_RETURN_IF_ERROR(rename_durably(final_dir, aside));
  FRUGAL_RETURN_IF_ERROR(rename_durably(job.tmp_dir, final_dir));
  return remove_tree(aside);
}

}  // namespace

Status commit_checkpoint(const CommitJob& job) {
  const std::string step_name = step_dir_name(job.header.step);
  const std::string final_dir = join_path(job.root, step_name);
  Status status = [&]() -> Status {
    FRUGAL_RETURN_IF_ERROR(wait_for_shards(job));
    FRUGAL_ASSIGN_OR_RETURN(Manifest manifest, build_manifest(job));
    FRUGAL_RETURN_IF_ERROR(write_manifest(job, encode_manifest(manifest)));
    fire(job, FaultPhase::kBeforeDirRename);
    return publish_directory(job, final_dir);
  }();
  if (!status.is_ok()) {
    (void)remove_tree(job.tmp_dir);
    return status.with_context("checkpoint of step " + std::to_string(job.header.step));
  }
  fire(job, FaultPhase::kLatest);
  // LATEST is only a hint: a failure to update it loses nothing.
  if (Status s = write_file_atomically(join_path(job.root, kLatestName), step_name + "\n");
      !s.is_ok()) {
    spdlog::warn("checkpoint: could not update LATEST: {}", s.to_string());
  }
  // The save is committed; failing to remove old ones only costs space.
  if (Status s = collect_garbage(job.root, job.keep, job.header.step, job.fault); !s.is_ok()) {
    spdlog::warn("checkpoint: could not remove old checkpoints: {}", s.to_string());
  }
  return Status::ok();
}

Status collect_garbage(const std::string& root, int keep, int64_t current_step,
                       const std::optional<FaultPlan>* fault) {
  FRUGAL_ASSIGN_OR_RETURN(std::vector<std::string> names, list_directory(root));
  std::vector<std::pair<int64_t, std::string>> committed;
  std::vector<std::string> victims;
  for (const std::string& name : names) {
    if (auto step = parse_step_dir_name(name)) {
      committed.emplace_back(*step, name);
    } else if (is_tmp_step_dir_name(name)) {
      // Only unfinished saves of older steps: a newer one may be another job's save in flight.
      auto step = parse_step_dir_name(name.substr(0, name.find('.')));
      if (step && *step < current_step) victims.push_back(name);
    }
  }
  // Leftovers first: a crashed collection may have left the very name a victim is renamed to.
  for (const std::string& name : victims)
    FRUGAL_RETURN_IF_ERROR(remove_tree(join_path(root, name)));
  // Steps newer than this save come from before a resume (the restore skipped them as invalid):
  // they are superseded. Of the rest the newest `keep` stay, this save first among them.
  std::sort(committed.rbegin(), committed.rend());
  std::vector<std::pair<int64_t, std::string>> doomed;
  int kept = 0;
  for (const auto& entry : committed) {
    if (entry.first > current_step || ++kept > keep) doomed.push_back(entry);
  }
  bool first = true;
  for (const auto& [step, name] : doomed) {
    const std::string aside = join_path(root, tmp_step_dir_name(step, "gc"));
    FRUGAL_RETURN_IF_ERROR(rename_durably(join_path(root, name), aside));
    if (first) maybe_inject_fault(*fault, FaultPhase::kCleanup, 0, current_step);
    first = false;
    FRUGAL_RETURN_IF_ERROR(remove_tree(aside));
  }
  return Status::ok();
}

}  // namespace frugal::ckpt
