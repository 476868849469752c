#include "bench/ckpt_bench.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <latch>
#include <memory>
#include <numeric>
#include <span>
#include <thread>

#include "bench/plot_script.h"
#include "ckpt/checkpointer.h"
#include "ckpt/files.h"
#include "ckpt/layout.h"
#include "ckpt/restore.h"
#include "comm/factory.h"
#include "core/clock.h"
#include "core/stats.h"
#include "core/timeline.h"

namespace frugal::bench {
namespace {

constexpr double kGB = 1e9;
constexpr double kMiB = 1024.0 * 1024.0;
// Collectives wait for the slowest rank's synchronous save, so the timeout is generous; a rank
// that fails destroys its communicator, which ends the others' waits at once instead.
constexpr int64_t kGroupTimeoutMs = 600'000;
// --steps-between-saves auto: the save interval is this many times the persist time estimated
// from the disk baseline, because the persist shares cores and disk with training.
constexpr double kAutoIntervalHeadroom = 1.5;
constexpr int kMinAutoStepsBetweenSaves = 2;
// Peak memory is about (ranks + 3) x the state: every rank's copy, the snapshot buffers (one
// state in all) or, while restoring onto ranks + 1, their replicated copies plus the expected
// state. Disk: two committed checkpoints per mode plus one in progress.
constexpr int kExtraStatesInMemory = 3;
constexpr int kStatesOnDisk = 6;
constexpr int kUpdatesPerTensor = 4;
constexpr int kMaxRanks = 64;

double seconds_of(const auto& body) {
  const auto start = SteadyClock::now();
  body();
  return seconds_since(start);
}

// ---------------------------------------------------------------------------------------------
// The synthetic state.

// Parameter tensors of a transformer-like model with `parameters` in all: an embedding of about
// a fifth of them, blocks (attention, MLP, norms) of hidden size h, a multiple of 64 giving about
// 8 blocks, and one tensor with the rest. Real tensor sizes matter: the snapshot copy and the
// shard chunks see their boundaries.
std::vector<std::pair<std::string, Shape>> synthetic_parameters(int64_t parameters) {
  const int64_t h =
      std::max<int64_t>(64, static_cast<int64_t>(std::sqrt(parameters / 96.0) / 64) * 64);
  const std::vector<std::pair<std::string, Shape>> block = {
      {"attn.qkv.weight", {3 * h, h}}, {"attn.qkv.bias", {3 * h}}, {"attn.proj.weight", {h, h}},
      {"attn.proj.bias", {h}},         {"norm1.weight", {h}},      {"norm1.bias", {h}},
      {"mlp.fc1.weight", {4 * h, h}},  {"mlp.fc1.bias", {4 * h}},  {"mlp.fc2.weight", {h, 4 * h}},
      {"mlp.fc2.bias", {h}},           {"norm2.weight", {h}},      {"norm2.bias", {h}}};
  int64_t block_numel = 0;
  for (const auto& [name, shape] : block) block_numel += shape_numel(shape);

  std::vector<std::pair<std::string, Shape>> params;
  int64_t left = parameters;
  auto add = [&](std::string name, Shape shape) {
    left -= shape_numel(shape);
    params.emplace_back(std::move(name), std::move(shape));
  };
  if (const int64_t rows = parameters / 5 / h; rows > 0) add("embed.weight", {rows, h});
  for (int b = 0; left >= block_numel; ++b) {
    for (const auto& [name, shape] : block) add(fmt::format("blocks.{}.{}", b, name), shape);
  }
  if (left > 0) add("head.weight", {left});
  return params;
}

// Parameters, then each moment of every parameter, packed in that order: the bytes of one
// rank's state buffer are exactly the checkpoint's replicated space.
ckpt::PackedLayout state_layout(int64_t parameters, int moments) {
  static constexpr const char* kMomentNames[] = {"exp_avg", "exp_avg_sq"};
  const auto params = synthetic_parameters(parameters);
  std::vector<ckpt::EntryInfo> entries;
  auto add = [&](std::string name, const Shape& shape) {
    entries.push_back({std::move(name), DType::kF32, shape, ckpt::entry_bytes(DType::kF32, shape)});
  };
  for (const auto& [name, shape] : params) add("param/" + name, shape);
  for (int m = 0; m < moments; ++m) {
    for (const auto& [name, shape] : params) add("optim/" + name + "/" + kMomentNames[m], shape);
  }
  return ckpt::pack(std::move(entries));
}

int64_t state_bytes(const CkptBenchOptions& options) {
  return options.parameters * (1 + options.moments) * static_cast<int64_t>(sizeof(float));
}

// Element i of the initial state: spread over [-0.5, 0.5) by a multiplicative hash, so that no
// page is zero and no two tensors look alike.
void fill_state(std::span<float> state) {
  for (size_t i = 0; i < state.size(); ++i) {
    const uint32_t x = static_cast<uint32_t>(i) * 2654435761u;
    state[i] = static_cast<float>(x >> 8) * 0x1p-24f - 0.5f;
  }
}

// The "optimizer" of `step`: adds 1 to a few elements of every entry, spread over it and moving
// from step to step, so that a snapshot copied after before_update() (a torn one) differs from
// the state at the saved step somewhere in almost every chunk.
void apply_update(std::span<float> state, const ckpt::PackedLayout& layout, int64_t step) {
  for (size_t e = 0; e < layout.entries.size(); ++e) {
    const int64_t numel = layout.entries[e].bytes / static_cast<int64_t>(sizeof(float));
    float* entry = state.data() + layout.offsets[e] / static_cast<int64_t>(sizeof(float));
    for (int64_t j = 0; j < kUpdatesPerTensor; ++j) {
      entry[(step * 7919 + j * (numel / kUpdatesPerTensor + 1)) % numel] += 1.0f;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The training loop.

// CPU work standing in for forward and backward: multiply-adds over a buffer that stays in the
// L1 cache, so the training thread occupies its core for the whole window (the snapshot copy
// and the persist must share the machine with it, as with real compute) without hiding the
// copy's memory traffic behind its own.
class BusyWork {
 public:
  // The median rate of trials of at least 50 ms on this thread (a shared machine disturbs
  // single trials either way).
  void calibrate() {
    int64_t passes = 16;
    while (seconds_of([&] { run_passes(passes); }) < 0.05) passes *= 2;
    std::vector<double> rates;
    for (int trial = 0; trial < 5; ++trial) {
      const double ms = 1e3 * seconds_of([&] { run_passes(passes); });
      rates.push_back(static_cast<double>(passes) / ms);
    }
    passes_per_ms_ = median(rates);
  }
  // About `ms` of work on an undisturbed core; longer when the core is shared.
  void run_ms(double ms) { run_passes(std::llround(ms * passes_per_ms_)); }

 private:
  void run_passes(int64_t passes) {
    float* y = buffer_.data();
    for (int64_t p = 0; p < passes; ++p) {
      for (size_t i = 0; i < buffer_.size(); ++i) y[i] = y[i] * 0.999f + 0.001f;
    }
  }
  std::vector<float> buffer_ = std::vector<float>(4096, 1.0f);
  double passes_per_ms_ = 0;
};

// One thread-rank's own copy of the state and its calibrated work.
struct RankState {
  std::unique_ptr<float[]> data;
  int64_t numel = 0;
  BusyWork work;
  std::span<float> span() { return {data.get(), static_cast<size_t>(numel)}; }
};

// Where one save blocked one rank's training thread.
struct SaveStall {
  double wait_s = 0;           // explicit wait() for the previous save
  double save_s = 0;           // save()
  double before_update_s = 0;  // the before_update() of the next step
  double marks_s = 0;          // forward_begins() + backward_begins() of the next step
  double total() const { return wait_s + save_s + before_update_s + marks_s; }
};

struct RankRun {
  // The Checkpointer's SNAPSHOT and PERSIST events and the loop's own phases (lane 0).
  std::unique_ptr<Timeline> timeline;
  std::vector<SaveStall> saves;
  std::vector<double> step_s;
  double forward_s = 0;
  double backward_s = 0;
  ckpt::CheckpointStats stats;
};

struct StepPlan {
  int steps = 0;  // last_save_step + 1, so that the last save's before_update() is measured
  int steps_between_saves = 0;
  int last_save_step = 0;
  double forward_ms = 0;
  double backward_ms = 0;
};

std::vector<ckpt::StateSource> make_sources(const ckpt::PackedLayout& layout, const float* data) {
  std::vector<ckpt::StateSource> sources;
  const auto* bytes = reinterpret_cast<const std::byte*>(data);
  for (size_t e = 0; e < layout.entries.size(); ++e) {
    sources.push_back({layout.entries[e], ckpt::Sharing::kReplicated, bytes + layout.offsets[e],
                       /*stable_until_update=*/true});
  }
  return sources;
}

// One save, with the wait for the previous one timed apart: save() would wait for it too, and
// the split shows whether the save interval is shorter than the persist.
Result<SaveStall> save_step(ckpt::Checkpointer& ckpt, int64_t step,
                            const std::vector<ckpt::StateSource>& sources) {
  SaveStall stall;
  std::vector<ckpt::StateSource> copy = sources;  // outside the timing: a trainer keeps these
  stall.wait_s = seconds_of([&] { ckpt.wait(); });
  Status status;
  stall.save_s = seconds_of([&] { status = ckpt.save(step, std::move(copy)); });
  if (!status.is_ok()) return status.with_context("save of step " + std::to_string(step));
  return stall;
}

// `ms` of work, recorded on the training thread's lane; returns the seconds it took.
double traced_work(BusyWork& work, double ms, std::string_view name, Timeline& timeline) {
  const int64_t start_us = now_us();
  work.run_ms(ms);
  const int64_t took_us = now_us() - start_us;
  timeline.record(name, start_us, took_us);
  return static_cast<double>(took_us) * 1e-6;
}

// One rank's steps of one mode (`ckpt` null: the baseline). The stall of a save is closed by
// the next step's before_update(); every step ends with a barrier, as the gradient allreduce
// would synchronize it, so a slow rank holds up all.
Status train_steps(Communicator& comm, RankState& state, const ckpt::PackedLayout& layout,
                   const StepPlan& plan, ckpt::Checkpointer* ckpt, RankRun& run) {
  const std::vector<ckpt::StateSource> sources = make_sources(layout, state.data.get());
  std::optional<SaveStall> pending;
  for (int64_t step = 1; step <= plan.steps; ++step) {
    const auto step_start = SteadyClock::now();
    double marks_s = 0;
    if (ckpt) marks_s += seconds_of([&] { ckpt->forward_begins(); });
    run.forward_s += traced_work(state.work, plan.forward_ms, phase::kForward, *run.timeline);
    if (ckpt) marks_s += seconds_of([&] { ckpt->backward_begins(); });
    run.backward_s += traced_work(state.work, plan.backward_ms, phase::kBackward, *run.timeline);
    if (ckpt) {
      const double blocked = seconds_of([&] { ckpt->before_update(); });
      if (pending) {
        pending->before_update_s = blocked;
        pending->marks_s = marks_s;
        run.saves.push_back(*pending);
        pending.reset();
      }
    }
    apply_update(state.span(), layout, step);
    if (ckpt && step % plan.steps_between_saves == 0 && step <= plan.last_save_step) {
      FRUGAL_ASSIGN_OR_RETURN(pending, save_step(*ckpt, step, sources));
    }
    FRUGAL_RETURN_IF_ERROR(comm.barrier());
    run.step_s.push_back(seconds_since(step_start));
  }
  if (ckpt) {
    ckpt->wait();  // after the timed steps: the last persist and commit
    run.stats = ckpt->stats();
  }
  return Status::ok();
}

// Runs body(comm) on `world` thread-ranks of a fresh local group. Returns the failure that
// happened first, naming its rank: the others usually fail only because it left the group (a
// failed rank destroys its communicator, so their waits end at once).
Status run_ranks(int world, const std::function<Status(Communicator&)>& body) {
  FRUGAL_ASSIGN_OR_RETURN(auto group, make_local_group(world, kGroupTimeoutMs));
  std::vector<Status> results(static_cast<size_t>(world));
  std::vector<int> failure_order(static_cast<size_t>(world), world);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      const auto i = static_cast<size_t>(r);
      results[i] = body(*group[i]);
      if (!results[i].is_ok()) {
        failure_order[i] = failures.fetch_add(1);
        group[i].reset();
      }
    });
  }
  for (auto& t : threads) t.join();
  const auto first = std::min_element(failure_order.begin(), failure_order.end());
  if (*first == world) return Status::ok();
  const auto r = static_cast<size_t>(first - failure_order.begin());
  return results[r].with_context("rank " + std::to_string(r));
}

// ---------------------------------------------------------------------------------------------
// Summaries.

// Nearest-rank percentile (a measured value), q in (0, 1].
double percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const auto rank = static_cast<size_t>(std::ceil(q * static_cast<double>(values.size())));
  return values[std::clamp<size_t>(rank, 1, values.size()) - 1];
}

double mean(const std::vector<double>& values) {
  if (values.empty()) return 0;
  return std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(values.size());
}

// Per save, the maximum over ranks of `part` of that save, in ms.
std::vector<double> max_over_ranks_ms(const std::vector<RankRun>& runs, size_t saves,
                                      const std::function<double(const SaveStall&)>& part) {
  std::vector<double> out(saves, 0.0);
  for (const RankRun& run : runs) {
    for (size_t i = 0; i < saves; ++i) out[i] = std::max(out[i], 1e3 * part(run.saves[i]));
  }
  return out;
}

// Every rank must have closed every save, and rank 0 must have committed all of them: a
// benchmark of failed saves would measure nothing.
Status check_saves(const std::string& mode, const std::vector<RankRun>& runs, int saves) {
  for (size_t r = 0; r < runs.size(); ++r) {
    const ckpt::CheckpointStats& stats = runs[r].stats;
    if (static_cast<int>(runs[r].saves.size()) != saves || !stats.last_error.empty()) {
      return internal_error(fmt::format("{} mode, rank {}: {} of {} saves timed; last error: {}",
                                        mode, r, runs[r].saves.size(), saves,
                                        stats.last_error.empty() ? "none" : stats.last_error));
    }
  }
  const ckpt::CheckpointStats& root = runs[0].stats;
  if (root.saves_committed != saves || root.saves_failed != 0) {
    return internal_error(fmt::format("{} mode: rank 0 committed {} and failed {} of {} saves",
                                      mode, root.saves_committed, root.saves_failed, saves));
  }
  return Status::ok();
}

// Per save, the longest write + fsync of a shard over the ranks (the Checkpointer's PERSIST
// events, one per save and rank, in save order; every save of a mode writes the same bytes).
std::vector<double> persist_ms_per_save(const std::vector<RankRun>& runs, size_t saves) {
  std::vector<double> out(saves, 0.0);
  for (const RankRun& run : runs) {
    size_t i = 0;
    for (const TraceEvent& event : run.timeline->events()) {
      if (event.name != phase::kPersist || i >= saves) continue;
      out[i] = std::max(out[i], static_cast<double>(event.duration_us) * 1e-3);
      ++i;
    }
  }
  return out;
}

CkptModeResult summarize_mode(const std::string& mode, const StepPlan& plan,
                              const std::vector<RankRun>& runs, int saves) {
  CkptModeResult result;
  result.mode = mode;
  result.steps = plan.steps;
  const auto n = static_cast<size_t>(mode == "none" ? 0 : saves);
  result.stall_ms = max_over_ranks_ms(runs, n, [](const SaveStall& s) { return s.total(); });
  result.wait_ms = max_over_ranks_ms(runs, n, [](const SaveStall& s) { return s.wait_s; });
  result.save_ms = max_over_ranks_ms(runs, n, [](const SaveStall& s) { return s.save_s; });
  result.before_update_ms =
      max_over_ranks_ms(runs, n, [](const SaveStall& s) { return s.before_update_s; });
  result.marks_ms = max_over_ranks_ms(runs, n, [](const SaveStall& s) { return s.marks_s; });
  result.stall_p50_ms = median(result.stall_ms);
  result.stall_p99_ms = percentile(result.stall_ms, 0.99);
  for (double s : runs[0].step_s) result.step_ms.push_back(1e3 * s);
  result.step_mean_ms = mean(result.step_ms);
  result.forward_ms = 1e3 * runs[0].forward_s / plan.steps;
  result.backward_ms = 1e3 * runs[0].backward_s / plan.steps;
  for (const RankRun& run : runs) result.persist_bytes += run.stats.last_shard_bytes;
  result.persist_ms = persist_ms_per_save(runs, n);
  result.persist_p50_ms = median(result.persist_ms);
  if (result.persist_p50_ms > 0) {
    result.persist_gbps =
        static_cast<double>(result.persist_bytes) / (result.persist_p50_ms * 1e-3) / kGB;
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// The phases of a run.

struct Setup {
  CkptBenchOptions options;
  std::string dir;
  ckpt::PackedLayout layout;
  StepPlan plan;
  std::vector<RankState> states;
};

// Every rank's state buffer and work rate, measured on all ranks at once as they will run.
Status prepare_ranks(Setup& setup) {
  const int64_t numel = setup.layout.total / static_cast<int64_t>(sizeof(float));
  setup.states.resize(static_cast<size_t>(setup.options.ranks));
  return run_ranks(setup.options.ranks, [&](Communicator& comm) {
    RankState& state = setup.states[static_cast<size_t>(comm.rank())];
    state.data = std::make_unique_for_overwrite<float[]>(static_cast<size_t>(numel));
    state.numel = numel;
    fill_state(state.span());  // touches every page now, not in the first mode
    FRUGAL_RETURN_IF_ERROR(comm.barrier());
    state.work.calibrate();
    return Status::ok();
  });
}

// One rank of one mode: the state from its start, a Checkpointer (none for the baseline) and
// the steps, all ranks starting together.
Status run_mode_rank(Communicator& comm, Setup& setup, const std::string& mode,
                     const ckpt::CheckpointerOptions& ckpt_options, RankRun& run) {
  const int r = comm.rank();
  RankState& state = setup.states[static_cast<size_t>(r)];
  fill_state(state.span());  // every mode trains the same state from the same start
  run.timeline = std::make_unique<Timeline>(r, /*enabled=*/true);
  std::unique_ptr<ckpt::Checkpointer> ckpt;
  if (mode != "none") {
    FRUGAL_ASSIGN_OR_RETURN(
        ckpt, ckpt::Checkpointer::create(r, setup.options.ranks, ckpt_options, run.timeline.get()));
    // As the trainer does: the host buffer is allocated before training, not in the first save.
    ckpt->prepare(make_sources(setup.layout, state.data.get()));
  }
  FRUGAL_RETURN_IF_ERROR(comm.barrier());
  return train_steps(comm, state, setup.layout, setup.plan, ckpt.get(), run);
}

Result<CkptModeResult> run_mode(Setup& setup, const std::string& mode) {
  std::vector<RankRun> runs(static_cast<size_t>(setup.options.ranks));
  ckpt::CheckpointerOptions ckpt_options;
  ckpt_options.dir = setup.dir + "/" + mode;
  ckpt_options.run_id = ckpt::make_run_id();
  ckpt_options.chunk_bytes = setup.options.chunk_bytes;
  ckpt_options.async = mode == "async";
  ckpt_options.meta = {{"benchmark", "frugal bench ckpt"}, {"mode", mode}};
  Status status = run_ranks(setup.options.ranks, [&](Communicator& comm) {
    return run_mode_rank(comm, setup, mode, ckpt_options, runs[static_cast<size_t>(comm.rank())]);
  });
  FRUGAL_RETURN_IF_ERROR(status.with_context(mode + " mode"));
  if (!setup.options.trace_prefix.empty()) {
    std::vector<std::string> arrays;
    for (const RankRun& run : runs) arrays.push_back(run.timeline->to_json());
    FRUGAL_RETURN_IF_ERROR(
        write_chrome_trace(setup.options.trace_prefix + "." + mode + ".trace.json", arrays));
  }
  if (mode != "none") FRUGAL_RETURN_IF_ERROR(check_saves(mode, runs, setup.options.saves));
  return summarize_mode(mode, setup.plan, runs, setup.options.saves);
}

// write(2) of all of `data` in calls of at most `write_bytes`.
Status write_all(int fd, std::span<const std::byte> data, int64_t write_bytes,
                 const std::string& path) {
  while (!data.empty()) {
    const auto size = static_cast<size_t>(std::min<int64_t>(std::ssize(data), write_bytes));
    const ssize_t written = ::write(fd, data.data(), size);
    if (written < 0 && errno == EINTR) continue;
    if (written <= 0) return unavailable("disk baseline: write " + path + ": " + strerror(errno));
    data = data.subspan(static_cast<size_t>(written));
  }
  return Status::ok();
}

struct WriterSpan {
  SteadyClock::time_point start, end;
};

// One disk-baseline writer: `data` to a new file in large writes, then fsync, timed.
Result<WriterSpan> write_and_fsync(const std::string& path, std::span<const std::byte> data,
                                   int64_t write_bytes, std::latch& start_line) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return unavailable("disk baseline: open " + path + ": " + strerror(errno));
  start_line.arrive_and_wait();
  WriterSpan span{SteadyClock::now(), {}};
  Status status = write_all(fd, data, write_bytes, path);
  if (status.is_ok() && ::fsync(fd) != 0) {
    status = unavailable("disk baseline: fsync " + path + ": " + strerror(errno));
  }
  span.end = SteadyClock::now();
  ::close(fd);
  if (!status.is_ok()) return status;
  return span;
}

// The disk's sequential write + fsync bandwidth as the checkpoint uses it: one writer per rank,
// concurrently, each writing that rank's share of its own state (so the copy into the page
// cache reads memory as the persist does) to a file in the run's directory.
Result<CkptDiskResult> measure_disk(const Setup& setup, const std::string& when) {
  const int writers = setup.options.ranks;
  const std::string dir = setup.dir + "/disk-baseline";
  FRUGAL_RETURN_IF_ERROR(ckpt::make_directories(dir));
  std::latch start_line(writers);
  std::vector<Result<WriterSpan>> spans(static_cast<size_t>(writers), internal_error("not run"));
  CkptDiskResult result{when, writers, 0, 0, 0};
  std::vector<std::thread> threads;
  for (int r = 0; r < writers; ++r) {
    const ckpt::ByteRange share =
        ckpt::partition(setup.layout.total, r, writers, setup.options.chunk_bytes);
    const auto* state = reinterpret_cast<const std::byte*>(setup.states[r].data.get());
    const std::span<const std::byte> data(state + share.lo, static_cast<size_t>(share.size()));
    result.bytes += share.size();
    threads.emplace_back([&, r, data] {
      spans[static_cast<size_t>(r)] = write_and_fsync(fmt::format("{}/writer-{}.bin", dir, r), data,
                                                      setup.options.disk_write_bytes, start_line);
    });
  }
  for (auto& t : threads) t.join();
  FRUGAL_RETURN_IF_ERROR(ckpt::remove_tree(dir));
  auto first = SteadyClock::time_point::max();
  auto last = SteadyClock::time_point::min();
  for (auto& span : spans) {
    FRUGAL_RETURN_IF_ERROR(span.status());
    first = std::min(first, span->start);
    last = std::max(last, span->end);
  }
  result.seconds = std::chrono::duration<double>(last - first).count();
  result.gbps = static_cast<double>(result.bytes) / result.seconds / kGB;
  return result;
}

// Evicts every file under `dir` from the page cache, so that a restore reads the disk, not
// memory. The checkpoint's files were fsynced, so their pages are clean and DONTNEED drops them.
Status drop_cached_pages(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code error;
  for (fs::recursive_directory_iterator it(dir, error), end; !error && it != end;
       it.increment(error)) {
    if (!it->is_regular_file(error)) continue;
    const int fd = ::open(it->path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return unavailable("cannot open " + it->path().string() + ": " + strerror(errno));
    const int advice = ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
    if (advice != 0) return unavailable("posix_fadvise " + it->path().string() + " failed");
  }
  if (error) return unavailable("cannot list " + dir + ": " + error.message());
  return Status::ok();
}

// The name of the entry holding byte `offset` of the replicated space.
std::string entry_at(const ckpt::PackedLayout& layout, int64_t offset) {
  const auto it = std::upper_bound(layout.offsets.begin(), layout.offsets.end(), offset);
  if (it == layout.offsets.begin()) return "?";
  const auto e = static_cast<size_t>(it - layout.offsets.begin() - 1);
  return fmt::format("{} byte {}", layout.entries[e].name, offset - layout.offsets[e]);
}

// The restored state must be the state right after the optimizer of the saved step, bit for
// bit: a snapshot torn by the next step's update, or a wrong reshard, fails here.
Status check_restored(const ckpt::RestoredState& restored, std::span<const std::byte> expected,
                      int64_t step) {
  if (restored.manifest.step != step) {
    return data_loss(fmt::format("restore check failed: {} holds step {}, the last save was {}",
                                 restored.path, restored.manifest.step, step));
  }
  if (restored.replicated.size() != expected.size()) {
    return data_loss(fmt::format("restore check failed: {} replicated bytes, expected {}",
                                 restored.replicated.size(), expected.size()));
  }
  if (std::memcmp(restored.replicated.data(), expected.data(), expected.size()) == 0) {
    return Status::ok();
  }
  const auto differ =
      std::mismatch(expected.begin(), expected.end(), restored.replicated.begin()).first;
  return data_loss(fmt::format(
      "restore check failed: the restored state differs from the state at step {} at {} ({})", step,
      differ - expected.begin(),
      entry_at(restored.manifest.replicated, differ - expected.begin())));
}

Result<CkptRestoreResult> run_restore(const Setup& setup, int ranks, bool cold,
                                      std::span<const std::byte> expected, int64_t step) {
  const std::string dir = setup.dir + "/async";
  if (cold) FRUGAL_RETURN_IF_ERROR(drop_cached_pages(dir));
  std::vector<double> seconds(static_cast<size_t>(ranks));
  std::vector<int64_t> bytes_read(static_cast<size_t>(ranks));
  FRUGAL_RETURN_IF_ERROR(run_ranks(ranks, [&](Communicator& comm) -> Status {
                           const auto r = static_cast<size_t>(comm.rank());
                           FRUGAL_RETURN_IF_ERROR(comm.barrier());
                           Result<std::optional<ckpt::RestoredState>> restored =
                               internal_error("not run");
                           seconds[r] =
                               seconds_of([&] { restored = ckpt::restore_latest(comm, dir); });
                           FRUGAL_RETURN_IF_ERROR(restored.status());
                           if (!restored->has_value())
                             return data_loss("restore check failed: no checkpoint in " + dir);
                           bytes_read[r] = (*restored)->bytes_read;
                           return check_restored(**restored, expected, step);
                         }).with_context(fmt::format("restore on {} ranks", ranks)));
  CkptRestoreResult result;
  result.ranks = ranks;
  result.saved_ranks = setup.options.ranks;
  result.cold = cold;
  result.step = step;
  result.bytes = std::ssize(expected);
  result.bytes_read = std::accumulate(bytes_read.begin(), bytes_read.end(), int64_t{0});
  result.seconds = *std::max_element(seconds.begin(), seconds.end());
  result.gbps = static_cast<double>(result.bytes) / result.seconds / kGB;
  return result;
}

// The state after the optimizer of `step`, rebuilt from scratch, independently of the ranks.
std::vector<float> expected_state(const ckpt::PackedLayout& layout, int64_t step) {
  std::vector<float> state(static_cast<size_t>(layout.total / static_cast<int64_t>(sizeof(float))));
  fill_state(state);
  for (int64_t s = 1; s <= step; ++s) apply_update(state, layout, s);
  return state;
}

// Restores the newest asynchronous checkpoint: cold and warm on as many ranks as saved it,
// then cold resharded onto one more rank.
Result<std::vector<CkptRestoreResult>> run_restores(Setup& setup, int64_t last_save_step) {
  setup.states.clear();  // the ranks' copies are no longer needed: room for the restored ones
  const std::vector<float> expected = expected_state(setup.layout, last_save_step);
  const auto bytes = std::as_bytes(std::span<const float>(expected));
  const int ranks = setup.options.ranks;
  std::vector<CkptRestoreResult> results;
  const std::pair<int, bool> cases[] = {{ranks, true}, {ranks, false}, {ranks + 1, true}};
  for (const auto& [world, cold] : cases) {
    FRUGAL_ASSIGN_OR_RETURN(CkptRestoreResult result,
                            run_restore(setup, world, cold, bytes, last_save_step));
    results.push_back(result);
  }
  return results;
}

// Enough steps between saves for the previous persist to end first (see kAutoIntervalHeadroom).
int auto_steps_between_saves(const CkptBenchOptions& options, int64_t bytes, double disk_gbps) {
  const double step_ms = options.forward_ms + options.backward_ms;
  const double persist_ms = 1e3 * static_cast<double>(bytes) / (disk_gbps * kGB);
  if (step_ms <= 0) return kMinAutoStepsBetweenSaves;
  return std::max(kMinAutoStepsBetweenSaves,
                  static_cast<int>(std::ceil(kAutoIntervalHeadroom * persist_ms / step_ms)));
}

// A fresh directory for this run under `parent` (made if missing), with room for the files.
Result<std::string> make_run_dir(const std::string& parent, int64_t state_bytes) {
  FRUGAL_RETURN_IF_ERROR(ckpt::make_directories(parent).with_context("--dir"));
  std::string path = parent + "/frugal-ckpt-XXXXXX";
  if (::mkdtemp(path.data()) == nullptr) {
    return unavailable("--dir: cannot create a directory in " + parent + ": " + strerror(errno));
  }
  struct statvfs fs {};
  if (::statvfs(path.c_str(), &fs) == 0) {
    const double free_bytes = static_cast<double>(fs.f_bavail) * static_cast<double>(fs.f_frsize);
    const double need = static_cast<double>(kStatesOnDisk * state_bytes);
    if (need > free_bytes) {
      (void)ckpt::remove_tree(path);
      return failed_precondition(fmt::format(
          "--dir: {} has {:.1f} GB free; the benchmark needs about {:.1f} GB ({} x the state)",
          parent, free_bytes / kGB, need / kGB, kStatesOnDisk));
    }
  }
  return path;
}

// Removes the run's directory when the run ends, however it ends, unless it is to be kept.
class DirectoryGuard {
 public:
  DirectoryGuard(std::string path, bool keep) : path_(std::move(path)), keep_(keep) {}
  ~DirectoryGuard() {
    if (!keep_) (void)ckpt::remove_tree(path_);
  }
  DirectoryGuard(const DirectoryGuard&) = delete;
  DirectoryGuard& operator=(const DirectoryGuard&) = delete;

 private:
  std::string path_;
  bool keep_;
};

std::string range_error(const std::string& flag, const std::string& value,
                        const std::string& valid) {
  return flag + " " + value + " is invalid; it must be " + valid;
}

// ---------------------------------------------------------------------------------------------
// Output.

std::string optional_text(const std::optional<double>& value, const char* format) {
  return value ? fmt::format(fmt::runtime(format), *value) : "-";
}

nlohmann::ordered_json optional_json(const std::optional<double>& value) {
  return value ? nlohmann::ordered_json(*value) : nlohmann::ordered_json(nullptr);
}

const CkptModeResult* find_mode(const CkptBenchResult& result, const std::string& mode) {
  for (const CkptModeResult& m : result.modes) {
    if (m.mode == mode) return &m;
  }
  return nullptr;
}

std::string restore_label(const CkptRestoreResult& r) {
  return fmt::format(
      "restore, {} ranks{}, {} cache", r.ranks,
      r.ranks == r.saved_ranks ? "" : fmt::format(" (resharded from {})", r.saved_ranks),
      r.cold ? "cold" : "warm");
}

std::string met_text(bool met) { return met ? "met" : "**missed**"; }

std::string mode_rows(const CkptBenchResult& result) {
  std::string out =
      "| mode | stall p50 (ms) | stall p99 (ms) | wait for previous p50 (ms) | save() p50 (ms) | "
      "before_update p50 (ms) | step mean (ms) | of which work (ms) | vs no checkpoint | persist "
      "(GB/s) | vs disk |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const CkptModeResult& m : result.modes) {
    const bool saves = m.mode != "none";
    auto ms = [&](double value) { return saves ? fmt::format("{:.1f}", value) : "-"; };
    out +=
        fmt::format("| {} | {} | {} | {} | {} | {} | {:.1f} | {:.1f} | {} | {} | {} |\n", m.mode,
                    ms(m.stall_p50_ms), ms(m.stall_p99_ms), ms(median(m.wait_ms)),
                    ms(median(m.save_ms)), ms(median(m.before_update_ms)), m.step_mean_ms,
                    m.forward_ms + m.backward_ms, optional_text(m.step_change_percent, "{:+.1f}%"),
                    saves ? fmt::format("{:.2f}", m.persist_gbps) : "-",
                    optional_text(m.persist_vs_disk, "{:.2f}x"));
  }
  return out;
}

std::string throughput_rows(const CkptBenchResult& result) {
  std::string out = "| throughput | GB | seconds | GB/s | vs disk |\n|---|---:|---:|---:|---:|\n";
  auto row = [&](const std::string& label, int64_t bytes, double seconds, double gbps) {
    out += fmt::format("| {} | {:.3f} | {:.3f} | {:.2f} | {:.2f}x |\n", label,
                       static_cast<double>(bytes) / kGB, seconds, gbps, gbps / result.disk_gbps);
  };
  for (const CkptDiskResult& d : result.disk) {
    row(fmt::format("disk: {} writers, {:.0f} MiB write(2) + fsync, {} the saves", d.writers,
                    static_cast<double>(result.options.disk_write_bytes) / kMiB, d.when),
        d.bytes, d.seconds, d.gbps);
  }
  for (const CkptModeResult& m : result.modes) {
    if (m.mode == "none") continue;
    row(fmt::format("persist, {} (write + fsync of every shard, p50 of saves)", m.mode),
        m.persist_bytes, m.persist_p50_ms * 1e-3, m.persist_gbps);
  }
  for (const CkptRestoreResult& r : result.restores) {
    row(restore_label(r), r.bytes, r.seconds, r.gbps);
  }
  return out;
}

}  // namespace

Status validate(const CkptBenchOptions& o) {
  if (o.parameters < 1000 || o.parameters > int64_t{50'000'000'000}) {
    return invalid_argument(range_error("--parameters", std::to_string(o.parameters),
                                        "a whole number from 1000 to 5e10"));
  }
  if (o.moments < 0 || o.moments > 2) {
    return invalid_argument(range_error("--moments", std::to_string(o.moments), "0, 1 or 2"));
  }
  if (o.ranks < 1 || o.ranks > kMaxRanks) {
    return invalid_argument(
        range_error("--ranks", std::to_string(o.ranks), "from 1 to " + std::to_string(kMaxRanks)));
  }
  if (o.saves < 1 || o.saves > 1000) {
    return invalid_argument(range_error("--saves", std::to_string(o.saves), "from 1 to 1000"));
  }
  const std::pair<const char*, double> windows[] = {{"--forward-ms", o.forward_ms},
                                                    {"--backward-ms", o.backward_ms}};
  for (const auto& [flag, ms] : windows) {
    if (!(ms >= 0 && ms <= 60'000)) {
      return invalid_argument(range_error(flag, fmt::format("{}", ms), "from 0 to 60000"));
    }
  }
  if (o.steps_between_saves && (*o.steps_between_saves < 1 || *o.steps_between_saves > 10'000)) {
    return invalid_argument(range_error("--steps-between-saves",
                                        std::to_string(*o.steps_between_saves),
                                        "'auto' or from 1 to 10000"));
  }
  if (o.chunk_bytes < 4096 || o.chunk_bytes > (int64_t{1} << 30)) {
    return invalid_argument(
        range_error("--chunk-bytes", std::to_string(o.chunk_bytes), "from 4K to 1G"));
  }
  if (o.disk_write_bytes < 4096 || o.disk_write_bytes > (int64_t{1} << 30)) {
    return invalid_argument(
        range_error("disk_write_bytes", std::to_string(o.disk_write_bytes), "from 4K to 1G"));
  }
  if (o.parent_dir.empty()) return invalid_argument("--dir must not be empty");
  const double memory =
      static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
  const double need = static_cast<double>(state_bytes(o)) * (o.ranks + kExtraStatesInMemory);
  if (need > 0.9 * memory) {
    return invalid_argument(fmt::format(
        "--parameters {} with --moments {} and --ranks {} needs about {:.1f} GB of memory "
        "(the state x (ranks + {})); this machine has {:.1f} GB",
        o.parameters, o.moments, o.ranks, need / kGB, kExtraStatesInMemory, memory / kGB));
  }
  return Status::ok();
}

Result<CkptBenchResult> run_ckpt_bench(const CkptBenchOptions& options,
                                       const std::function<void(const std::string&)>& note) {
  FRUGAL_RETURN_IF_ERROR(validate(options));
  auto say = [&](const std::string& text) {
    if (note) note(text);
  };
  Setup setup;
  setup.options = options;
  setup.layout = state_layout(options.parameters, options.moments);
  FRUGAL_ASSIGN_OR_RETURN(setup.dir, make_run_dir(options.parent_dir, setup.layout.total));
  DirectoryGuard guard(setup.dir, options.keep_files);

  CkptBenchResult result;
  result.options = options;
  result.dir = setup.dir;
  result.tensors = static_cast<int>(setup.layout.entries.size());
  result.state_bytes = setup.layout.total;
  say(fmt::format("state: {:.2f} GB in {} tensors x {} ranks; directory {}",
                  static_cast<double>(result.state_bytes) / kGB, result.tensors, options.ranks,
                  setup.dir));
  FRUGAL_RETURN_IF_ERROR(prepare_ranks(setup));

  say("disk baseline (before the saves)");
  FRUGAL_ASSIGN_OR_RETURN(CkptDiskResult disk_before, measure_disk(setup, "before"));
  result.disk.push_back(disk_before);
  result.steps_between_saves_auto = !options.steps_between_saves.has_value();
  result.steps_between_saves = options.steps_between_saves.value_or(
      auto_steps_between_saves(options, result.state_bytes, disk_before.gbps));
  setup.plan.steps_between_saves = result.steps_between_saves;
  setup.plan.last_save_step = options.saves * result.steps_between_saves;
  setup.plan.steps = setup.plan.last_save_step + 1;
  setup.plan.forward_ms = options.forward_ms;
  setup.plan.backward_ms = options.backward_ms;

  // The disk is measured again between and after the saving modes, because a shared disk's
  // bandwidth drifts; the reference is the median of the three.
  for (const char* mode : {"none", "sync", "async"}) {
    say(fmt::format("{} mode: {} steps", mode, setup.plan.steps));
    FRUGAL_ASSIGN_OR_RETURN(CkptModeResult m, run_mode(setup, mode));
    result.modes.push_back(std::move(m));
    if (result.modes.back().mode == "none") continue;
    const std::string when = result.modes.back().mode == "sync" ? "between" : "after";
    say("disk baseline (" + when + " the saves)");
    FRUGAL_ASSIGN_OR_RETURN(CkptDiskResult disk, measure_disk(setup, when));
    result.disk.push_back(disk);
  }
  std::vector<double> disk_gbps;
  for (const CkptDiskResult& d : result.disk) disk_gbps.push_back(d.gbps);
  result.disk_gbps = median(disk_gbps);

  say("restores");
  FRUGAL_ASSIGN_OR_RETURN(result.restores, run_restores(setup, setup.plan.last_save_step));

  const double baseline_ms = result.modes[0].step_mean_ms;
  for (CkptModeResult& m : result.modes) {
    if (m.mode == "none") continue;
    m.step_change_percent = 100.0 * (m.step_mean_ms / baseline_ms - 1.0);
    m.persist_vs_disk = m.persist_gbps / result.disk_gbps;
  }
  const CkptModeResult* sync = find_mode(result, "sync");
  const CkptModeResult* async = find_mode(result, "async");
  result.stall_ratio = async->stall_p50_ms / median(sync->save_ms);
  result.persist_ratio = *async->persist_vs_disk;
  if (options.keep_files) say("kept " + setup.dir);
  return result;
}

std::string format_markdown(const CkptBenchResult& result) {
  const CkptBenchOptions& o = result.options;
  const CkptModeResult& baseline = result.modes.front();
  std::string out = fmt::format(
      "**Checkpoint benchmark**: {:.1f}M parameters + {} moments = {:.2f} GB of f32 state in {} "
      "tensors, {} thread-ranks, chunk {:.0f} MiB, directory {}\n\n",
      static_cast<double>(o.parameters) / 1e6, o.moments,
      static_cast<double>(result.state_bytes) / kGB, result.tensors, o.ranks,
      static_cast<double>(o.chunk_bytes) / kMiB, result.dir);
  out += fmt::format(
      "Each step: forward {:.0f} ms + backward {:.0f} ms of CPU work (measured without "
      "checkpoints: {:.1f} + {:.1f} ms), the update, a barrier. A save every {} steps{}, {} "
      "saves per mode, {} steps per mode. Stall: time the training thread was blocked per save "
      "(wait + save() + the next before_update()), maximum over ranks. Work: the measured "
      "forward + backward per step of rank 0 (a fixed amount of work: longer when the CPU is "
      "shared or slower). Persist and restore throughputs are compared with the median of the "
      "disk measurements.\n\n",
      o.forward_ms, o.backward_ms, baseline.forward_ms, baseline.backward_ms,
      result.steps_between_saves,
      result.steps_between_saves_auto ? " (auto: 1.5 x the persist time the disk predicts)" : "",
      o.saves, baseline.steps);
  out += mode_rows(result) + "\n" + throughput_rows(result) + "\n";
  out += "| target | measured | goal | result |\n|---|---:|---:|---|\n";
  out += fmt::format("| async stall p50 / sync save() p50 | {:.4f} | <= {:.2f} | {} |\n",
                     result.stall_ratio, kCkptStallRatioTarget,
                     met_text(result.stall_ratio <= kCkptStallRatioTarget));
  out += fmt::format("| async persist / disk write + fsync | {:.2f} | >= {:.2f} | {} |\n\n",
                     result.persist_ratio, kCkptPersistRatioTarget,
                     met_text(result.persist_ratio >= kCkptPersistRatioTarget));
  out += fmt::format(
      "Restore check: passed: all {} restores equal the state after step {} bit for bit.\n",
      result.restores.size(), result.restores.empty() ? 0 : result.restores.front().step);
  return out;
}

std::string format_json(const CkptBenchResult& result) {
  const CkptBenchOptions& o = result.options;
  nlohmann::ordered_json run = {
      {"parameters", o.parameters},
      {"moments", o.moments},
      {"ranks", o.ranks},
      {"tensors", result.tensors},
      {"state_bytes", result.state_bytes},
      {"saves", o.saves},
      {"forward_ms", o.forward_ms},
      {"backward_ms", o.backward_ms},
      {"steps_between_saves", result.steps_between_saves},
      {"steps_between_saves_auto", result.steps_between_saves_auto},
      {"chunk_bytes", o.chunk_bytes},
      {"disk_write_bytes", o.disk_write_bytes},
      {"dir", result.dir},
      {"kept", o.keep_files},
      {"stall", "per save: max over ranks of wait + save() + next before_update() + marks"}};
  nlohmann::ordered_json modes = nlohmann::ordered_json::array();
  for (const CkptModeResult& m : result.modes) {
    modes.push_back({{"mode", m.mode},
                     {"steps", m.steps},
                     {"stall_p50_ms", m.stall_p50_ms},
                     {"stall_p99_ms", m.stall_p99_ms},
                     {"stall_ms", m.stall_ms},
                     {"wait_ms", m.wait_ms},
                     {"save_ms", m.save_ms},
                     {"save_p50_ms", median(m.save_ms)},
                     {"before_update_ms", m.before_update_ms},
                     {"marks_ms", m.marks_ms},
                     {"step_mean_ms", m.step_mean_ms},
                     {"step_ms", m.step_ms},
                     {"forward_ms", m.forward_ms},
                     {"backward_ms", m.backward_ms},
                     {"step_change_percent", optional_json(m.step_change_percent)},
                     {"persist_bytes", m.persist_bytes},
                     {"persist_ms", m.persist_ms},
                     {"persist_p50_ms", m.persist_p50_ms},
                     {"persist_gbps", m.persist_gbps},
                     {"persist_vs_disk", optional_json(m.persist_vs_disk)}});
  }
  nlohmann::ordered_json disk = nlohmann::ordered_json::array();
  for (const CkptDiskResult& d : result.disk) {
    disk.push_back({{"when", d.when},
                    {"writers", d.writers},
                    {"bytes", d.bytes},
                    {"seconds", d.seconds},
                    {"gbps", d.gbps}});
  }
  nlohmann::ordered_json restores = nlohmann::ordered_json::array();
  for (const CkptRestoreResult& r : result.restores) {
    restores.push_back({{"label", restore_label(r)},
                        {"ranks", r.ranks},
                        {"saved_ranks", r.saved_ranks},
                        {"cache", r.cold ? "cold" : "warm"},
                        {"step", r.step},
                        {"bytes", r.bytes},
                        {"bytes_read", r.bytes_read},
                        {"seconds", r.seconds},
                        {"gbps", r.gbps},
                        {"verified", true}});
  }
  nlohmann::ordered_json targets = {
      {"stall_ratio", result.stall_ratio},
      {"stall_ratio_max", kCkptStallRatioTarget},
      {"stall_met", result.stall_ratio <= kCkptStallRatioTarget},
      {"persist_ratio", result.persist_ratio},
      {"persist_ratio_min", kCkptPersistRatioTarget},
      {"persist_met", result.persist_ratio >= kCkptPersistRatioTarget}};
  return nlohmann::ordered_json{{"run", run},           {"modes", modes},
                                {"disk", disk},         {"disk_gbps", result.disk_gbps},
                                {"restores", restores}, {"restore_check", "passed"},
                                {"targets", targets}}
             .dump(2) +
         "\n";
}

Status plot_ckpt(const std::string& json_path, const std::string& svg_path) {
  return run_plot_script({"ckpt", "--json", json_path, "--out", svg_path});
}

}  // namespace frugal::bench
