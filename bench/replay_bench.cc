#include "bench/replay_bench.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <span>
#include <thread>

#include "bench/model_shapes.h"
#include "bench/normal_data.h"
#include "bench/plot_script.h"
#include "compress/registry.h"
#include "core/clock.h"
#include "core/stats.h"
#include "core/timeline.h"
#include "engine/gathered_trace.h"
#include "engine/synchronizer.h"

namespace frugal::bench {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;
constexpr char kDense[] = "dense";

// One rank's gradients: every tensor in one allocation, plus a pristine copy restored before
// each step, because the Synchronizer overwrites gradients with the average (and the compressors
// would otherwise see ever smaller averages of averages).
class Gradients {
 public:
  Gradients(const ModelShapes& shapes, uint64_t seed) : shapes_(shapes) {
    int64_t offset = 0;
    for (const ParamShape& param : shapes.params) {
      offsets_.push_back(offset);
      offset += shape_numel(param.shape);
      cumulative_.push_back(offset);
    }
    pristine_.resize(static_cast<size_t>(offset));
    fill_normal(pristine_, seed);
    data_ = pristine_;
  }

  int size() const { return static_cast<int>(offsets_.size()); }
  int64_t numel() const { return cumulative_.empty() ? 0 : cumulative_.back(); }
  // Parameters of tensors 0..i (backward order), which sets when tensor i is ready.
  int64_t cumulative(int i) const { return cumulative_[static_cast<size_t>(i)]; }
  const ParamShape& param(int i) const { return shapes_.params[static_cast<size_t>(i)]; }

  void restore() { std::memcpy(data_.data(), pristine_.data(), data_.size() * sizeof(float)); }
  MutableView view(int i) {
    return {data_.data() + offsets_[static_cast<size_t>(i)], DType::kF32, param(i).shape};
  }

 private:
  const ModelShapes& shapes_;
  std::vector<int64_t> offsets_;
  std::vector<int64_t> cumulative_;
  std::vector<float> data_;
  std::vector<float> pristine_;
};

// What a --fusion entry means: the Synchronizer's fusion and whether the compressor is used.
struct Strategy {
  std::string name;
  FusionSpec fusion;
  bool compressed = true;
};

Result<Strategy> parse_strategy(const std::string& text) {
  if (text == kDense)
    return Strategy{text, FusionSpec{FusionKind::kBytes, size_t{25} << 20}, false};
  auto spec = parse_fusion(text);
  if (!spec.is_ok()) {
    // The engine's message names the value and its valid forms; "dense" is the bench's own.
    return invalid_argument(spec.status().message() + "; or dense (no compressor, bytes:25)");
  }
  return Strategy{text, *spec, true};
}

Status max_over_ranks(Communicator& comm, std::vector<double>& values) {
  return comm.allreduce(flat_view(values.data(), DType::kF64, static_cast<int64_t>(values.size())),
                        ReduceOp::kMax);
}

Result<std::unique_ptr<Synchronizer>> make_synchronizer(Communicator& comm,
                                                        const Strategy& strategy,
                                                        Compressor* compressor, Timeline* timeline,
                                                        const Gradients& grads, int profile_steps) {
  SynchronizerOptions options;
  options.timeline = timeline;
  options.fusion = strategy.fusion.kind;
  options.fusion_threshold_bytes = strategy.fusion.bytes;
  options.compressor = compressor;
  options.profile_steps = profile_steps;
  auto sync = std::make_unique<Synchronizer>(comm, options);
  // Registered in backward order, the order the gradients are handed over.
  for (int i = 0; i < grads.size(); ++i) {
    FRUGAL_RETURN_IF_ERROR(
        sync->register_tensor(grads.param(i).name, grads.param(i).shape).status());
  }
  return sync;
}

// One step: every rank starts together; tensor i is handed over at backward_us x cumulative(i) /
// numel after the start (backward_us 0: all at once). Returns begin_step to finish_step in us.
Result<double> run_step(Communicator& comm, Synchronizer& sync, Gradients& grads,
                        double backward_us, Timeline* timeline = nullptr) {
  grads.restore();
  FRUGAL_RETURN_IF_ERROR(comm.barrier());
  const auto start = SteadyClock::now();
  const int64_t start_us = now_us();
  FRUGAL_RETURN_IF_ERROR(sync.begin_step());
  const double per_param_us = backward_us / static_cast<double>(grads.numel());
  for (int i = 0; i < grads.size(); ++i) {
    if (backward_us > 0) {
      const std::chrono::duration<double, std::micro> at(per_param_us *
                                                         static_cast<double>(grads.cumulative(i)));
      std::this_thread::sleep_until(start + std::chrono::duration_cast<SteadyClock::duration>(at));
    }
    FRUGAL_RETURN_IF_ERROR(sync.grad_ready(i, grads.view(i)));
  }
  if (timeline && timeline->enabled()) {
    // The paced hand-over stands for backward (lane 0, the training thread, as in frugal train).
    timeline->record(phase::kBackward, start_us, now_us() - start_us);
  }
  FRUGAL_RETURN_IF_ERROR(sync.finish_step());
  return std::chrono::duration<double, std::micro>(SteadyClock::now() - start).count();
}

// The dense communication time: a DDP-like step (no compressor, 25 MiB buckets) with every
// gradient ready at once, median of `steps` after one untimed step, max over ranks.
Result<double> measure_dense_comm_us(Communicator& comm, Gradients& grads, int steps) {
  const Strategy dense{kDense, FusionSpec{FusionKind::kBytes, size_t{25} << 20}, false};
  FRUGAL_ASSIGN_OR_RETURN(auto sync, make_synchronizer(comm, dense, nullptr, nullptr, grads, 1));
  FRUGAL_RETURN_IF_ERROR(run_step(comm, *sync, grads, 0).status());
  std::vector<double> times;
  for (int s = 0; s < steps; ++s) {
    FRUGAL_ASSIGN_OR_RETURN(double us, run_step(comm, *sync, grads, 0));
    times.push_back(us);
  }
  std::vector<double> result = {median(times)};
  FRUGAL_RETURN_IF_ERROR(max_over_ranks(comm, result));
  return result[0];
}

int warmup_steps(const ReplayBenchOptions& options) {
  if (options.warmup >= 0) return options.warmup;
  return SynchronizerOptions{}.profile_warmup_steps + options.profile_steps + 2;
}

Result<ReplayRow> run_strategy(Communicator& comm, Gradients& grads, const Strategy& strategy,
                               const ReplayBenchOptions& options, const std::string& model,
                               double backward_us) {
  // Fresh compressor and Synchronizer per strategy: no residual or plan carries over.
  std::unique_ptr<Compressor> compressor;
  if (strategy.compressed) {
    FRUGAL_ASSIGN_OR_RETURN(
        compressor,
        make_compressor(options.compressor, CompressorContext{comm.size(), options.seed}));
  }
  Timeline timeline(comm.rank(), !options.trace_prefix.empty());
  FRUGAL_ASSIGN_OR_RETURN(auto sync, make_synchronizer(comm, strategy, compressor.get(), &timeline,
                                                       grads, options.profile_steps));
  const int warmup = warmup_steps(options);
  std::vector<double> times;
  StepStatsSum sums;
  for (int s = 0; s < warmup + options.steps; ++s) {
    auto us = run_step(comm, *sync, grads, backward_us, &timeline);
    if (!us.is_ok()) {
      return us.status().with_context("strategy " + strategy.name + ", step " + std::to_string(s));
    }
    if (s < warmup) continue;
    times.push_back(*us);
    sums.add(sync->last_step_stats());
  }
  const double n = options.steps;
  std::vector<double> reduced = {median(times),
                                 sums.bytes_sent / n,
                                 sums.dense_wire_bytes / n,
                                 sums.compress_us / n,
                                 sums.decompress_us / n,
                                 sums.comm_us / n,
                                 sums.wait_us / n,
                                 sums.num_buckets / n,
                                 sums.tensors_compressed / n,
                                 sums.tensors_missing / n,
                                 sync->predicted_step_us(),
                                 sync->link_model().latency_us,
                                 sync->link_model().allreduce_us_per_byte,
                                 sync->link_model().allgather_us_per_byte};
  FRUGAL_RETURN_IF_ERROR(max_over_ranks(comm, reduced));
  if (timeline.enabled()) {
    FRUGAL_RETURN_IF_ERROR(write_gathered_trace(
        comm, timeline, trace_path(options.trace_prefix, model, strategy.name)));
  }

  ReplayRow row;
  row.fusion = strategy.name;
  row.compressor = compressor ? compressor->spec() : "none";
  row.iteration_ms = reduced[0] / 1e3;
  row.iterations_per_s = 1e3 / row.iteration_ms;
  row.bytes_sent = reduced[1];
  row.dense_wire_bytes = reduced[2];
  row.compress_ms = reduced[3] / 1e3;
  row.decompress_ms = reduced[4] / 1e3;
  row.comm_ms = reduced[5] / 1e3;
  row.wait_ms = reduced[6] / 1e3;
  row.num_buckets = reduced[7];
  row.tensors_compressed = reduced[8];
  row.tensors_missing = reduced[9];
  if (compressor && compressor->sparse_value_dtype() && row.tensors_compressed > 0) {
    row.missing_percent = 100.0 * row.tensors_missing / row.tensors_compressed;
  }
  row.predicted_step_ms = reduced[10] / 1e3;
  row.link = LinkModel{reduced[11], reduced[12], reduced[13]};
  return row;
}

const ReplayRow* find_row(const std::vector<ReplayRow>& rows, const std::string& fusion) {
  for (const ReplayRow& row : rows) {
    if (row.fusion == fusion) return &row;
  }
  return nullptr;
}

std::string missing_text(const ReplayRow& row) {
  if (!row.missing_percent) return "-";
  return fmt::format("{:.1f}%", *row.missing_percent);
}

std::string ratio_text(const std::optional<double>& ratio) {
  return ratio ? fmt::format("{:.2f}x", *ratio) : "-";
}

nlohmann::ordered_json optional_json(const std::optional<double>& value) {
  return value ? nlohmann::ordered_json(*value) : nlohmann::ordered_json(nullptr);
}

std::string backward_text(const ReplayResult& result) {
  if (!result.backward_auto) return fmt::format("{:.1f} ms (fixed)", result.backward_ms);
  return fmt::format("{:.1f} ms (auto: dense communication {:.1f} ms / {:.2f})", result.backward_ms,
                     result.dense_comm_ms, result.dense_comm_ms / result.backward_ms);
}

}  // namespace

Status validate(const ReplayBenchOptions& options) {
  for (const std::string& fusion : options.fusions) {
    FRUGAL_RETURN_IF_ERROR(parse_strategy(fusion).status());
  }
  if (options.fusions.empty()) return invalid_argument("--fusion: no strategy given");
  if (options.steps < 1) {
    return invalid_argument("--steps " + std::to_string(options.steps) +
                            " is invalid; it must be >= 1");
  }
  if (options.profile_steps < 1) {
    return invalid_argument("--profile-steps " + std::to_string(options.profile_steps) +
                            " is invalid; it must be >= 1");
  }
  if (options.dense_steps < 1) {
    return invalid_argument("dense_steps must be >= 1");
  }
  if (options.backward_ms && !(*options.backward_ms >= 0 && std::isfinite(*options.backward_ms))) {
    return invalid_argument("--backward-ms must be 'auto' or a number of milliseconds >= 0");
  }
  if (!(options.comm_ratio > 0 && std::isfinite(options.comm_ratio))) {
    return invalid_argument("--comm-ratio must be a number > 0 (dense communication / backward)");
  }
  auto compressor = make_compressor(options.compressor, CompressorContext{1, options.seed});
  if (!compressor.is_ok()) return compressor.status().with_context("--compress");
  return load_model_shapes(options.model, options.shapes_dir).status();
}

Result<ReplayResult> run_replay_bench(Communicator& comm, const ReplayBenchOptions& options) {
  FRUGAL_RETURN_IF_ERROR(validate(options));
  FRUGAL_ASSIGN_OR_RETURN(const ModelShapes shapes,
                          load_model_shapes(options.model, options.shapes_dir));
  std::vector<Strategy> strategies;
  for (const std::string& fusion : options.fusions) {
    FRUGAL_ASSIGN_OR_RETURN(Strategy strategy, parse_strategy(fusion));
    strategies.push_back(strategy);
  }
  // Rank-dependent data, as real ranks see different batches; the golden ratio spreads seeds.
  Gradients grads(shapes,
                  options.seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(comm.rank()));

  ReplayResult result;
  result.model = shapes.model;
  result.world_size = comm.size();
  result.backend = std::string(comm.backend());
  result.tensors = grads.size();
  result.parameters = grads.numel();
  FRUGAL_ASSIGN_OR_RETURN(const double dense_us,
                          measure_dense_comm_us(comm, grads, options.dense_steps));
  result.dense_comm_ms = dense_us / 1e3;
  result.backward_auto = !options.backward_ms.has_value();
  result.backward_ms =
      options.backward_ms ? *options.backward_ms : result.dense_comm_ms / options.comm_ratio;

  for (const Strategy& strategy : strategies) {
    FRUGAL_ASSIGN_OR_RETURN(ReplayRow row, run_strategy(comm, grads, strategy, options,
                                                        options.model, result.backward_ms * 1e3));
    row.model = result.model;
    row.world_size = result.world_size;
    row.tensors = result.tensors;
    row.parameters = result.parameters;
    row.backward_ms = result.backward_ms;
    row.dense_comm_ms = result.dense_comm_ms;
    row.steps = options.steps;
    row.warmup = warmup_steps(options);
    result.rows.push_back(std::move(row));
  }
  // Ratios against baselines of the same run (same machine load, same backward time).
  const ReplayRow* none = find_row(result.rows, "none");
  const ReplayRow* omgs = find_row(result.rows, "omgs");
  for (ReplayRow& row : result.rows) {
    if (none) row.speedup_vs_none = none->iteration_ms / row.iteration_ms;
    if (omgs) row.speedup_vs_omgs = omgs->iteration_ms / row.iteration_ms;
  }
  return result;
}

std::string trace_path(const std::string& prefix, const std::string& model,
                       const std::string& fusion) {
  std::string stem = model.substr(model.find_last_of('/') + 1);
  if (stem.ends_with(".txt")) stem.resize(stem.size() - 4);
  std::string name = fusion;
  std::replace(name.begin(), name.end(), ':', '-');
  return prefix + "." + stem + "." + name + ".trace.json";
}

std::string format_table(const ReplayResult& result) {
  std::string out = fmt::format(
      "# replay {}: {} tensors, {} parameters ({:.1f} MiB f32), {} ranks on {}\n", result.model,
      result.tensors, result.parameters, static_cast<double>(result.parameters) * 4 / kMiB,
      result.world_size, result.backend);
  std::string compressor = "none";
  for (const ReplayRow& row : result.rows) {
    if (row.compressor != "none") compressor = row.compressor;  // all but dense share it
  }
  out += "# backward " + backward_text(result) + "; compressor " + compressor + "\n";
  if (!result.rows.empty()) {
    out += fmt::format(
        "# iteration: median of {} steps after {} warm-up; counters: means per step; both max "
        "over ranks; times in ms; compr: tensors compressed, missing: share of them with no "
        "element sent\n",
        result.rows.front().steps, result.rows.front().warmup);
  }
  out += fmt::format(
      "#{:<11} {:>9} {:>7} {:>7} {:>7} {:>9} {:>6} {:>8} {:>8} {:>8} {:>8} {:>7} "
      "{:>6} {:>7} {:>8}\n",
      "fusion", "iter (ms)", "iter/s", "vs none", "vs omgs", "sent (MB)", "% dense", "compress",
      "decomp", "comm", "wait", "buckets", "compr", "missing", "pred (ms)");
  for (const ReplayRow& row : result.rows) {
    out += fmt::format(
        "{:<12} {:>9.1f} {:>7.2f} {:>7} {:>7} {:>9.2f} {:>6.1f} {:>8.1f} {:>8.1f} {:>8.1f} "
        "{:>8.1f} {:>7.1f} {:>6.0f} {:>7} {:>8}\n",
        row.fusion, row.iteration_ms, row.iterations_per_s, ratio_text(row.speedup_vs_none),
        ratio_text(row.speedup_vs_omgs), row.bytes_sent / 1e6,
        row.dense_wire_bytes > 0 ? 100.0 * row.bytes_sent / row.dense_wire_bytes : 0.0,
        row.compress_ms, row.decompress_ms, row.comm_ms, row.wait_ms, row.num_buckets,
        row.tensors_compressed, missing_text(row),
        row.predicted_step_ms > 0 ? fmt::format("{:.1f}", row.predicted_step_ms) : "-");
  }
  for (const ReplayRow& row : result.rows) {
    if (row.link.latency_us == 0 && row.link.allreduce_us_per_byte == 0) continue;
    out += fmt::format(
        "# {} link model: {:.0f} us + {:.3f} ns/B (allreduce), {:.3f} ns/B (allgather output)\n",
        row.fusion, row.link.latency_us, row.link.allreduce_us_per_byte * 1e3,
        row.link.allgather_us_per_byte * 1e3);
  }
  return out;
}

std::string format_markdown(const std::vector<ReplayResult>& results) {
  std::string out;
  for (const ReplayResult& result : results) {
    out += fmt::format("**{}** ({} tensors, {:.1f}M parameters), {} ranks on {}, backward {}\n\n",
                       result.model, result.tensors, static_cast<double>(result.parameters) / 1e6,
                       result.world_size, result.backend, backward_text(result));
    out +=
        "| fusion | iteration (ms) | iter/s | vs none | vs omgs | sent/step (MB) | compress (ms) | "
        "comm (ms) | wait (ms) | buckets | tensors missing | predicted (ms) |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for (const ReplayRow& row : result.rows) {
      out += fmt::format(
          "| `{}` | {:.1f} | {:.2f} | {} | {} | {:.2f} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {} | "
          "{} |\n",
          row.fusion, row.iteration_ms, row.iterations_per_s, ratio_text(row.speedup_vs_none),
          ratio_text(row.speedup_vs_omgs), row.bytes_sent / 1e6, row.compress_ms, row.comm_ms,
          row.wait_ms, row.num_buckets,
          row.missing_percent ? fmt::format("{:.1f}% ({:.1f} of {:.0f})", *row.missing_percent,
                                            row.tensors_missing, row.tensors_compressed)
                              : "-",
          row.predicted_step_ms > 0 ? fmt::format("{:.1f}", row.predicted_step_ms) : "-");
    }
    out += "\n";
  }
  return out;
}

std::string format_json(const std::vector<ReplayResult>& results,
                        const ReplayBenchOptions& options) {
  nlohmann::ordered_json run = {
      {"compressor", options.compressor},
      {"fusions", options.fusions},
      {"steps", options.steps},
      {"warmup", warmup_steps(options)},
      {"profile_steps", options.profile_steps},
      {"dense_steps", options.dense_steps},
      {"comm_ratio", options.comm_ratio},
      {"backward_ms", options.backward_ms ? nlohmann::ordered_json(*options.backward_ms) : "auto"},
      {"seed", options.seed},
      {"pacing", "tensor i ready at backward_ms x cumulative parameters / total parameters"},
      {"aggregation", "max over ranks of per-rank medians (iteration) and means (counters)"}};
  nlohmann::ordered_json models = nlohmann::ordered_json::array();
  nlohmann::ordered_json records = nlohmann::ordered_json::array();
  for (const ReplayResult& result : results) {
    run["world_size"] = result.world_size;
    run["backend"] = result.backend;
    models.push_back(result.model);
    for (const ReplayRow& row : result.rows) {
      records.push_back({{"model", row.model},
                         {"fusion", row.fusion},
                         {"compressor", row.compressor},
                         {"world_size", row.world_size},
                         {"tensors", row.tensors},
                         {"parameters", row.parameters},
                         {"backward_ms", row.backward_ms},
                         {"backward_auto", result.backward_auto},
                         {"dense_comm_ms", row.dense_comm_ms},
                         {"steps", row.steps},
                         {"warmup", row.warmup},
                         {"iteration_ms", row.iteration_ms},
                         {"iterations_per_s", row.iterations_per_s},
                         {"speedup_vs_none", optional_json(row.speedup_vs_none)},
                         {"speedup_vs_omgs", optional_json(row.speedup_vs_omgs)},
                         {"bytes_sent", row.bytes_sent},
                         {"dense_wire_bytes", row.dense_wire_bytes},
                         {"compress_ms", row.compress_ms},
                         {"decompress_ms", row.decompress_ms},
                         {"comm_ms", row.comm_ms},
                         {"wait_ms", row.wait_ms},
                         {"num_buckets", row.num_buckets},
                         {"tensors_compressed", row.tensors_compressed},
                         {"tensors_missing", row.tensors_missing},
                         {"missing_percent", optional_json(row.missing_percent)},
                         {"predicted_step_ms", row.predicted_step_ms},
                         {"link",
                          {{"latency_us", row.link.latency_us},
                           {"allreduce_us_per_byte", row.link.allreduce_us_per_byte},
                           {"allgather_us_per_byte", row.link.allgather_us_per_byte}}}});
    }
  }
  run["models"] = models;
  return nlohmann::ordered_json{{"run", run}, {"records", records}}.dump(2) + "\n";
}

Status plot_replay(const std::string& json_path, const std::string& svg_path) {
  return run_plot_script({"bars", "--json", json_path, "--records", "records", "--x", "model",
                          "--y", "iterations_per_s", "--group", "fusion", "--ylabel",
                          "iterations/s", "--title", "Engine replay: iterations/s by fusion",
                          "--out", svg_path});
}

}  // namespace frugal::bench
