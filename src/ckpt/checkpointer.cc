#include "ckpt/checkpointer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include "ckpt/files.h"
#include "ckpt/persist.h"
#include "core/clock.h"

namespace frugal::ckpt {
namespace {

// Lazy copies are cut into pieces this big, so a window's budget is honoured closely and the
// training thread can take over the rest at before_update().
constexpr int64_t kPieceBytes = int64_t{1} << 20;
// Share of a measured window the snapshot may fill: the copy must not outlast its window.
constexpr double kWindowFill = 0.8;
// Weight of the newest sample in the running means of window lengths and copy bandwidth.
constexpr double kSmoothing = 0.3;
constexpr int kSnapshotLane = 3;

struct CopyPiece {
  std::byte* dst;
  const std::byte* src;
  int64_t bytes;
};

double smooth(double mean, double sample) {
  return mean <= 0 ? sample : mean + kSmoothing * (sample - mean);
}

}  // namespace

struct Checkpointer::Impl {
  Impl(int r, int w, CheckpointerOptions o, Timeline* t)
      : rank(r), world(w), options(std::move(o)), timeline(t) {}

  // What save() hands over to the snapshot windows and the persist thread.
  struct Pending {
    int64_t step = 0;
    ShardContents contents;
    int64_t data_bytes = 0;
    PackedLayout replicated;
    nlohmann::json meta;
    std::vector<CopyPiece> lazy;
    size_t next_piece = 0;       // next lazy piece to copy
    int64_t released_bytes = 0;  // lazy bytes the windows so far allow
    int64_t taken_bytes = 0;     // lazy bytes handed to a copier
    int64_t copied_bytes = 0;    // lazy bytes copied
    int64_t lazy_bytes = 0;
    bool snapshot_done = false;
  };

  Status validate() const;
  // Bytes of this rank's shard data for these sources: its replicated share plus per-rank state.
  int64_t shard_data_bytes(const std::vector<StateSource>& sources) const;
  void grow_staging(int64_t bytes);
  Status stage(int64_t step, std::vector<StateSource>& sources, Pending& pending);
  // Copies lazy pieces while the budget allows (or all when `all`).
  void copy_pieces(bool all, int lane);
  Status persist(Pending& pending);
  // Counts a finished save (mutex held); a failed save is logged, never fatal to training.
  void count_outcome_locked(const Status& status);
  void worker_loop();
  void record(std::string_view name, int64_t start_us, int lane, std::string detail = {}) const {
    if (timeline != nullptr) timeline->record(name, start_us, now_us() - start_us, lane, detail);
  }

  const int rank, world;
  const CheckpointerOptions options;
  Timeline* const timeline;

  std::vector<std::byte> staging;  // reused from save to save: grown, never shrunk

  mutable std::mutex mutex;
  std::condition_variable changed;
  std::optional<Pending> pending;  // the save in flight
  // Training-thread time blocked by the last save, until the before_update() that follows it
  // adds its own wait and records the total.
  std::optional<double> open_stall_us;
  bool persisting = false;  // the worker owns `pending` for persisting
  bool stop = false;
  CheckpointStats stats;

  // The measured forward window (µs) and copy bandwidth (bytes per µs); the backward window
  // needs no measurement, as everything left is released when it opens.
  int64_t forward_start_us = 0;
  double forward_us = 0, copy_bytes_per_us = 0;

  std::thread worker;
};

Status Checkpointer::Impl::validate() const {
  if (options.dir.empty()) return invalid_argument("--checkpoint-dir must not be empty");
  if (options.keep < 1) return invalid_argument("--checkpoint-keep must be >= 1");
  if (options.chunk_bytes <= 0) return invalid_argument("checkpoint chunk bytes must be > 0");
  if (options.run_id.empty() || options.run_id.size() > kMaxRunIdLength) {
    return invalid_argument("checkpoint run id must have 1.." + std::to_string(kMaxRunIdLength) +
                            " characters");
  }
  if (options.commit_timeout_seconds <= 0) {
    return invalid_argument("--checkpoint-timeout must be > 0");
  }
  return make_directories(options.dir);
}

int64_t Checkpointer::Impl::shard_data_bytes(const std::vector<StateSource>& sources) const {
  int64_t replicated = 0, per_rank = 0;
  for (const StateSource& s : sources) {
    (s.sharing == Sharing::kReplicated ? replicated : per_rank) += s.info.bytes;
  }
  return partition(replicated, rank, world, options.chunk_bytes).size() + per_rank;
}

void Checkpointer::Impl::grow_staging(int64_t bytes) {
  // resize() value-initializes: every page is touched here, not during a later save.
  if (static_cast<int64_t>(staging.size()) < bytes) staging.resize(static_cast<size_t>(bytes));
}

// Lays out this rank's shard and copies what cannot wait; the rest becomes lazy pieces.
Status Checkpointer::Impl::stage(int64_t step, std::vector<StateSource>& sources, Pending& p) {
  std::vector<EntryInfo> replicated_infos;
  std::vector<const StateSource*> replicated, per_rank;
  for (const StateSource& s : sources) {
    if (s.info.bytes != entry_bytes(s.info.dtype, s.info.shape) ||
        (s.data == nullptr && s.info.bytes > 0)) {
      return invalid_argument("checkpoint state '" + s.info.name +
                              "': byte count does not match its dtype and shape, or no data");
    }
    (s.sharing == Sharing::kReplicated ? replicated : per_rank).push_back(&s);
    if (s.sharing == Sharing::kReplicated) replicated_infos.push_back(s.info);
  }
  p.step = step;
  p.replicated = pack(std::move(replicated_infos));
  const ByteRange share = partition(p.replicated.total, rank, world, options.chunk_bytes);
  p.contents.replicated = share;
  int64_t offset = share.size();
  for (const StateSource* s : per_rank) {
    p.contents.records.push_back({s->info, offset});
    offset += s->info.bytes;
  }
  p.data_bytes = offset;
  grow_staging(p.data_bytes);

  const bool lazy_allowed = options.async && options.lazy;
  for (size_t i = 0; i < replicated.size(); ++i) {
    const ByteRange entry{p.replicated.offsets[i],
                          p.replicated.offsets[i] + replicated[i]->info.bytes};
    const ByteRange mine = intersect(entry, share);
    if (mine.empty()) continue;
    std::byte* dst = staging.data() + (mine.lo - share.lo);
    const std::byte* src = replicated[i]->data + (mine.lo - entry.lo);
    if (!lazy_allowed || !replicated[i]->stable_until_update) {
      std::memcpy(dst, src, static_cast<size_t>(mine.size()));
      continue;
    }
    for (int64_t done = 0; done < mine.size(); done += kPieceBytes) {
      const int64_t bytes = std::min(kPieceBytes, mine.size() - done);
      p.lazy.push_back({dst + done, src + done, bytes});
      p.lazy_bytes += bytes;
    }
  }
  for (size_t i = 0; i < per_rank.size(); ++i) {
    std::memcpy(staging.data() + p.contents.records[i].data_offset, per_rank[i]->data,
                static_cast<size_t>(per_rank[i]->info.bytes));
  }
  return Status::ok();
}

void Checkpointer::Impl::copy_pieces(bool all, int lane) {
  std::unique_lock lock(mutex);
  while (pending && !persisting && pending->next_piece < pending->lazy.size()) {
    Pending& p = *pending;
    const CopyPiece piece = p.lazy[p.next_piece];
    if (!all && p.taken_bytes + piece.bytes > p.released_bytes) break;
    ++p.next_piece;
    p.taken_bytes += piece.bytes;
    lock.unlock();
    const int64_t start = now_us();
    std::memcpy(piece.dst, piece.src, static_cast<size_t>(piece.bytes));
    const int64_t took = std::max<int64_t>(now_us() - start, 1);
    record(phase::kSnapshot, start, lane);
    lock.lock();
    copy_bytes_per_us = smooth(copy_bytes_per_us, static_cast<double>(piece.bytes) / took);
    p.copied_bytes += piece.bytes;
    if (p.copied_bytes == p.lazy_bytes) {
      p.snapshot_done = true;  // every byte staged: the persist thread may start
      changed.notify_all();
    }
  }
}

void Checkpointer::Impl::count_outcome_locked(const Status& status) {
  if (status.is_ok()) {
    if (rank == 0) ++stats.saves_committed;
    return;
  }
  ++stats.saves_failed;
  stats.last_error = status.to_string();
  spdlog::warn("rank {}: {}; training goes on", rank, status.to_string());
}

Status Checkpointer::Impl::persist(Pending& p) {
  const int64_t start = now_us();
  const std::string tmp_dir = join_path(options.dir, tmp_step_dir_name(p.step, options.run_id));
  ShardJob job;
  job.tmp_dir = tmp_dir;
  job.header = {options.run_id, p.step, rank, world, options.chunk_bytes};
  job.data = ConstBytes(staging.data(), static_cast<size_t>(p.data_bytes));
  job.contents = p.contents;
  job.fault = &options.fault;
  Result<ShardInfo> written = persist_shard(job);
  {
    std::lock_guard lock(mutex);
    stats.last_persist_seconds = static_cast<double>(now_us() - start) * 1e-6;
    stats.last_shard_bytes = written.is_ok() ? written.value().file_bytes : 0;
  }
  record(phase::kPersist, start, kSnapshotLane, "step " + std::to_string(p.step));
  if (!written.is_ok()) {
    // Rank 0 will not commit this save: it removes the others' shards too, so that a full disk
    // is not kept full by an abandoned save.
    if (rank == 0) (void)remove_tree(tmp_dir);
    return written.status().with_context("checkpoint of step " + std::to_string(p.step));
  }
  if (rank != 0) return Status::ok();
  CommitJob commit;
  commit.root = options.dir;
  commit.tmp_dir = tmp_dir;
  commit.header = job.header;
  commit.replicated = p.replicated;
  commit.meta = p.meta;
  commit.timeout_seconds = options.commit_timeout_seconds;
  commit.keep = options.keep;
  commit.fault = &options.fault;
  return commit_checkpoint(commit);
}

void Checkpointer::Impl::worker_loop() {
  std::unique_lock lock(mutex);
  for (;;) {
    changed.wait(lock, [&] {
      if (stop && !pending) return true;
      if (!pending || persisting) return false;
      return pending->snapshot_done || pending->taken_bytes < pending->released_bytes;
    });
    if (!pending) return;
    if (!pending->snapshot_done) {
      lock.unlock();
      copy_pieces(false, kSnapshotLane);
      lock.lock();
      continue;
    }
    persisting = true;
    lock.unlock();
    const Status status = persist(*pending);
    lock.lock();
    count_outcome_locked(status);
    pending.reset();
    persisting = false;
    changed.notify_all();
  }
}

Checkpointer::Checkpointer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Checkpointer::~Checkpointer() {
  wait();
  {
    std::lock_guard lock(impl_->mutex);
    impl_->stop = true;
  }
  impl_->changed.notify_all();
  if (impl_->worker.joinable()) impl_->worker.join();
}

Result<std::unique_ptr<Checkpointer>> Checkpointer::create(int rank, int world_size,
                                                           CheckpointerOptions options,
                                                           Timeline* timeline) {
  auto impl = std::make_unique<Impl>(rank, world_size, std::move(options), timeline);
  FRUGAL_RETURN_IF_ERROR(impl->validate());
  Impl* raw = impl.get();
  if (raw->options.async) raw->worker = std::thread([raw] { raw->worker_loop(); });
  return std::unique_ptr<Checkpointer>(new Checkpointer(std::move(impl)));
}

Status Checkpointer::save(int64_t step, std::vector<StateSource> sources, nlohmann::json meta) {
  Impl& m = *impl_;
  const int64_t start = now_us();
  wait();  // at most one save in flight
  Impl::Pending p;
  p.meta = m.options.meta;
  if (meta.is_object()) p.meta.update(meta);
  FRUGAL_RETURN_IF_ERROR(m.stage(step, sources, p));
  maybe_inject_fault(m.options.fault, FaultPhase::kSnapshot, m.rank, step);
  {
    std::lock_guard lock(m.mutex);
    ++m.stats.saves_started;
  }
  if (!m.options.async) {
    const Status status = m.persist(p);
    std::lock_guard lock(m.mutex);
    m.stats.stall_seconds.push_back(static_cast<double>(now_us() - start) * 1e-6);
    m.count_outcome_locked(status);
    return Status::ok();  // a failed save never stops training
  }
  m.record(phase::kSnapshot, start, 0, "save step " + std::to_string(step));
  std::lock_guard lock(m.mutex);
  m.open_stall_us = static_cast<double>(now_us() - start);
  p.snapshot_done = p.lazy.empty();
  m.pending = std::move(p);
  m.changed.notify_all();
  return Status::ok();
}

void Checkpointer::prepare(const std::vector<StateSource>& sources) {
  wait();
  impl_->grow_staging(impl_->shard_data_bytes(sources));
}

void Checkpointer::forward_begins() {
  Impl& m = *impl_;
  std::lock_guard lock(m.mutex);
  m.forward_start_us = now_us();
  if (!m.pending || m.pending->snapshot_done) return;
  Impl::Pending& p = *m.pending;
  // The forward window gets the smaller share: what the measured window and bandwidth allow.
  // Before anything is measured, everything is released at once.
  const bool measured = m.forward_us > 0 && m.copy_bytes_per_us > 0;
  const int64_t budget =
      measured ? static_cast<int64_t>(kWindowFill * m.forward_us * m.copy_bytes_per_us)
               : p.lazy_bytes;
  p.released_bytes = std::min(p.lazy_bytes, p.released_bytes + budget);
  m.changed.notify_all();
}

void Checkpointer::backward_begins() {
  Impl& m = *impl_;
  std::lock_guard lock(m.mutex);
  if (m.forward_start_us > 0) {
    m.forward_us = smooth(m.forward_us, static_cast<double>(now_us() - m.forward_start_us));
  }
  if (!m.pending || m.pending->snapshot_done) return;
  // The backward window is the last before the update: everything left is released.
  m.pending->released_bytes = m.pending->lazy_bytes;
  m.changed.notify_all();
}

void Checkpointer::before_update() {
  Impl& m = *impl_;
  const int64_t start = now_us();
  bool copy_rest = false;
  {
    std::lock_guard lock(m.mutex);
    copy_rest = m.pending && !m.pending->snapshot_done;
  }
  if (copy_rest) {
    // Whatever the windows did not finish, the training thread copies itself.
    m.copy_pieces(true, 0);
    std::unique_lock lock(m.mutex);
    m.changed.wait(lock, [&] { return !m.pending || m.pending->snapshot_done; });
    m.record(phase::kWait, start, 0, "checkpoint snapshot");
  }
  std::lock_guard lock(m.mutex);
  if (m.open_stall_us) {
    m.stats.stall_seconds.push_back((*m.open_stall_us + static_cast<double>(now_us() - start)) *
                                    1e-6);
    m.open_stall_us.reset();
  }
}

void Checkpointer::wait() {
  Impl& m = *impl_;
  if (!m.options.async) return;
  before_update();
  std::unique_lock lock(m.mutex);
  m.changed.wait(lock, [&] { return !m.pending; });
}

void Checkpointer::step_ended(int64_t step) {
  maybe_inject_fault(impl_->options.fault, FaultPhase::kStepEnd, impl_->rank, step);
}

CheckpointStats Checkpointer::stats() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->stats;
}

const CheckpointerOptions& Checkpointer::options() const { return impl_->options; }

std::string make_run_id() {
  std::random_device device;
  std::mt19937_64 generator((static_cast<uint64_t>(device()) << 32) ^ device() ^
                            static_cast<uint64_t>(now_us()));
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id(kMaxRunIdLength, '0');
  for (char& c : id) c = kHex[generator() & 15];
  return id;
}

}  // namespace frugal::ckpt
