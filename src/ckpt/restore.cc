#include "ckpt/restore.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

#include "ckpt/files.h"
#include "ckpt/inspect.h"
#include "ckpt/shard_file.h"
#include "core/clock.h"

namespace frugal::ckpt {
namespace {

// The manifest and every shard's header and footer; data chunks are checked as they are read.
Result<Manifest> check_committed(const std::string& step_dir) {
  FRUGAL_ASSIGN_OR_RETURN(Manifest manifest, load_manifest(step_dir));
  for (int r = 0; r < manifest.world_size; ++r) {
    FRUGAL_RETURN_IF_ERROR(open_checked_shard(step_dir, manifest, r).status());
  }
  return manifest;
}

Status remove_leftovers(const std::string& dir, const std::vector<std::string>& names) {
  for (const std::string& name : names) {
    const bool tmp_file = name.size() > 4 && name.ends_with(".tmp");
    if (!is_tmp_step_dir_name(name) && !tmp_file) continue;
    spdlog::info("checkpoint: removing {} (left by an unfinished save)", name);
    FRUGAL_RETURN_IF_ERROR(remove_tree(join_path(dir, name)));
  }
  return Status::ok();
}

// Reads this rank's share of the replicated space from every shard that overlaps it.
Status read_replicated_share(const std::string& step_dir, const Manifest& manifest, ByteRange share,
                             std::byte* out, int64_t& bytes_read) {
  for (const ManifestShard& shard : manifest.shards) {
    const ByteRange overlap = intersect(share, shard.replicated);
    if (overlap.empty()) continue;
    FRUGAL_ASSIGN_OR_RETURN(auto reader, open_checked_shard(step_dir, manifest, shard.rank));
    FRUGAL_RETURN_IF_ERROR(reader->read(
        overlap.lo - shard.replicated.lo,
        MutableBytes(out + (overlap.lo - share.lo), static_cast<size_t>(overlap.size()))));
    bytes_read += overlap.size();
  }
  return Status::ok();
}

Status read_record(ShardReader& reader, const ShardRecord& record, std::vector<std::byte>& out,
                   int64_t& bytes_read) {
  out.resize(static_cast<size_t>(record.info.bytes));
  bytes_read += record.info.bytes;
  return reader.read(record.data_offset, out);
}

const ShardRecord* find_record(const ManifestShard& shard, const std::string& name) {
  for (const ShardRecord& r : shard.records) {
    if (r.info.name == name) return &r;
  }
  return nullptr;
}

// Per-rank state for rank `rank` of `world`: its own when the world size is unchanged; else the
// mean over the saved ranks of f32 state they all hold, the rest dropped with a warning.
Status read_per_rank(const std::string& step_dir, const Manifest& manifest, int rank, int world,
                     RestoredState& state) {
  if (world == manifest.world_size) {
    FRUGAL_ASSIGN_OR_RETURN(auto reader, open_checked_shard(step_dir, manifest, rank));
    for (const ShardRecord& record : manifest.shards[static_cast<size_t>(rank)].records) {
      RestoredState::Blob& blob = state.per_rank[record.info.name];
      blob.info = record.info;
      FRUGAL_RETURN_IF_ERROR(read_record(*reader, record, blob.data, state.bytes_read));
    }
    return Status::ok();
  }
  std::vector<std::unique_ptr<ShardReader>> readers;
  for (int r = 0; r < manifest.world_size; ++r) {
    FRUGAL_ASSIGN_OR_RETURN(auto reader, open_checked_shard(step_dir, manifest, r));
    readers.push_back(std::move(reader));
  }
  int dropped = 0;
  std::vector<std::byte> bytes;
  for (const ShardRecord& first : manifest.shards[0].records) {
    const EntryInfo& info = first.info;
    std::vector<const ShardRecord*> records;
    for (const ManifestShard& shard : manifest.shards) {
      const ShardRecord* r = find_record(shard, info.name);
      if (r != nullptr && r->info.dtype == info.dtype && r->info.shape == info.shape) {
        records.push_back(r);
      }
    }
    if (info.dtype != DType::kF32 || records.size() != manifest.shards.size()) {
      ++dropped;
      continue;
    }
    const size_t n = static_cast<size_t>(info.bytes) / sizeof(float);
    std::vector<double> sum(n, 0.0);
    for (size_t r = 0; r < records.size(); ++r) {
      FRUGAL_RETURN_IF_ERROR(read_record(*readers[r], *records[r], bytes, state.bytes_read));
      const float* values = reinterpret_cast<const float*>(bytes.data());
      for (size_t i = 0; i < n; ++i) sum[i] += values[i];
    }
    RestoredState::Blob& blob = state.per_rank[info.name];
    blob.info = info;
    blob.data.resize(static_cast<size_t>(info.bytes));
    float* mean = reinterpret_cast<float*>(blob.data.data());
    for (size_t i = 0; i < n; ++i) mean[i] = static_cast<float>(sum[i] / records.size());
  }
  if (dropped > 0) {
    state.warnings.push_back(
        "saved on " + std::to_string(manifest.world_size) + " ranks, restored on " +
        std::to_string(world) + ": " + std::to_string(dropped) +
        " per-rank state entries that cannot be resharded were dropped (reset)");
  }
  if (!state.per_rank.empty()) {
    state.warnings.push_back("per-rank state (" + std::to_string(state.per_rank.size()) +
                             " entries) resharded to the mean over the saved ranks");
  }
  return Status::ok();
}

// This rank's part of loading one checkpoint; the caller agrees on the outcome with the others.
Status load_local(const std::string& step_dir, int rank, int world, RestoredState& state,
                  std::vector<size_t>& share_sizes) {
  FRUGAL_ASSIGN_OR_RETURN(state.manifest, load_manifest(step_dir));
  const Manifest& manifest = state.manifest;
  state.replicated.resize(static_cast<size_t>(manifest.replicated.total));
  share_sizes.clear();
  for (int r = 0; r < world; ++r) {
    share_sizes.push_back(static_cast<size_t>(
        partition(manifest.replicated.total, r, world, manifest.chunk_bytes).size()));
  }
  const ByteRange share = partition(manifest.replicated.total, rank, world, manifest.chunk_bytes);
  FRUGAL_RETURN_IF_ERROR(read_replicated_share(
      step_dir, manifest, share, state.replicated.data() + share.lo, state.bytes_read));
  return read_per_rank(step_dir, manifest, rank, world, state);
}

// Every rank's failure to load its part, so that all of them report the same reasons and move
// on together. Messages are cut to a fixed length so one allgather carries them.
Result<std::vector<std::string>> gather_failures(Communicator& comm, const Status& local) {
  constexpr size_t kMessageBytes = 512;
  std::string mine(kMessageBytes, '\0');
  if (!local.is_ok()) {
    const std::string text = "rank " + std::to_string(comm.rank()) + ": " + local.message();
    mine.replace(0, std::min(text.size(), kMessageBytes - 1), text, 0, kMessageBytes - 1);
  }
  std::string all(kMessageBytes * static_cast<size_t>(comm.size()), '\0');
  FRUGAL_RETURN_IF_ERROR(
      comm.allgather(ConstBytes(reinterpret_cast<const std::byte*>(mine.data()), mine.size()),
                     MutableBytes(reinterpret_cast<std::byte*>(all.data()), all.size())));
  std::vector<std::string> failures;
  for (int r = 0; r < comm.size(); ++r) {
    const std::string text = all.substr(static_cast<size_t>(r) * kMessageBytes, kMessageBytes);
    if (text[0] != '\0') failures.push_back(text.c_str());
  }
  return failures;
}

// Rank 0's choice broadcast to every rank: a path, or empty for none.
Result<std::string> broadcast_choice(Communicator& comm, const std::string& choice) {
  std::vector<uint64_t> length{choice.size()};
  FRUGAL_RETURN_IF_ERROR(comm.broadcast(bytes_of(length), 0));
  std::string path = comm.rank() == 0 ? choice : std::string(length[0], '\0');
  FRUGAL_RETURN_IF_ERROR(
      comm.broadcast(MutableBytes(reinterpret_cast<std::byte*>(path.data()), path.size()), 0));
  return path;
}

}  // namespace

Result<std::optional<std::string>> find_latest_valid(const std::string& dir, bool clean,
                                                     std::vector<std::string>* warnings) {
  return find_latest_valid_before(dir, clean, INT64_MAX, warnings);
}

Result<std::optional<std::string>> find_latest_valid_before(const std::string& dir, bool clean,
                                                            int64_t before_step,
                                                            std::vector<std::string>* warnings) {
  Result<std::vector<std::string>> listed = list_directory(dir);
  if (!listed.is_ok()) {
    if (listed.status().code() == StatusCode::kNotFound) return std::optional<std::string>();
    return listed.status();
  }
  const std::vector<std::string>& names = listed.value();
  if (clean) FRUGAL_RETURN_IF_ERROR(remove_leftovers(dir, names));
  std::vector<std::pair<int64_t, std::string>> committed;
  for (const std::string& name : names) {
    if (auto step = parse_step_dir_name(name); step && *step < before_step) {
      committed.emplace_back(*step, name);
    }
  }
  std::sort(committed.rbegin(), committed.rend());
  for (const auto& [step, name] : committed) {
    const std::string path = join_path(dir, name);
    const Result<Manifest> checked = check_committed(path);
    if (checked.is_ok()) return std::optional<std::string>(path);
    if (warnings != nullptr) {
      warnings->push_back("skipped " + path + ": " + checked.status().message());
    }
  }
  return std::optional<std::string>();
}

Result<std::optional<RestoredState>> restore_latest(Communicator& comm, const std::string& dir) {
  const int64_t start = now_us();
  std::vector<std::string> warnings;
  int64_t before_step = INT64_MAX;
  for (bool clean = true;; clean = false) {
    std::string choice;
    Status found = Status::ok();
    if (comm.rank() == 0) {
      auto latest = find_latest_valid_before(dir, clean, before_step, &warnings);
      if (latest.is_ok()) {
        choice = latest.value().value_or("");
      } else {
        found = latest.status();
      }
    }
    // Rank 0's failure to even list the directory is everyone's: agree before going on.
    int32_t listed = found.is_ok() ? 1 : 0;
    FRUGAL_RETURN_IF_ERROR(comm.allreduce({&listed, DType::kI32, {1}}, ReduceOp::kMin));
    if (listed == 0) {
      return found.is_ok() ? aborted("rank 0 could not list " + dir) : found;
    }
    FRUGAL_ASSIGN_OR_RETURN(const std::string path, broadcast_choice(comm, choice));
    if (path.empty()) {
      if (comm.rank() == 0) {
        for (const std::string& w : warnings) spdlog::warn("checkpoint: {}", w);
      }
      return std::optional<RestoredState>();
    }
    RestoredState state;
    state.path = path;
    std::vector<size_t> share_sizes;
    const Status local = load_local(path, comm.rank(), comm.size(), state, share_sizes);
    FRUGAL_ASSIGN_OR_RETURN(const std::vector<std::string> failures, gather_failures(comm, local));
    if (failures.empty()) {
      const ByteRange share = partition(state.manifest.replicated.total, comm.rank(), comm.size(),
                                        state.manifest.chunk_bytes);
      // allgatherv cannot read and write the same buffer: the share goes through a copy.
      std::vector<std::byte> mine(state.replicated.begin() + share.lo,
                                  state.replicated.begin() + share.hi);
      FRUGAL_RETURN_IF_ERROR(comm.allgatherv(mine, share_sizes, state.replicated));
      warnings.insert(warnings.end(), state.warnings.begin(), state.warnings.end());
      state.warnings = std::move(warnings);
      // Every rank has the same warnings; one copy is enough.
      if (comm.rank() == 0) {
        for (const std::string& w : state.warnings) spdlog::warn("checkpoint: {}", w);
      }
      state.seconds = static_cast<double>(now_us() - start) * 1e-6;
      return std::optional<RestoredState>(std::move(state));
    }
    for (const std::string& failure : failures)
      warnings.push_back("skipped " + path + ": " + failure);
    // Every rank moves on to the next older checkpoint (only rank 0's choice matters).
    const std::string name = path.substr(path.find_last_of('/') + 1);
    before_step = parse_step_dir_name(name).value_or(0);
  }
}

}  // namespace frugal::ckpt
