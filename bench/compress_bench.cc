#include "bench/compress_bench.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <optional>

#include "bench/model_shapes.h"
#include "bench/normal_data.h"
#include "bench/torch_baseline.h"
#include "compress/registry.h"
#include "compress/spec.h"
#include "core/stats.h"
#include "core/thread_pool.h"

namespace frugal::bench {
namespace {

using Clock = std::chrono::steady_clock;

// The memory-read baseline: one pass over the input, as fast as the machine streams floats.
// 64 independent partial sums let the compiler keep several vector accumulators in flight (a
// single float sum cannot be vectorized without reassociation).
__attribute__((target_clones("avx512f", "avx2", "default"))) float sum_floats(const float* x,
                                                                              size_t n) {
  constexpr size_t kLanes = 64;
  float acc[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (size_t j = 0; j < kLanes; ++j) acc[j] += x[i + j];
  }
  float sum = 0;
  for (; i < n; ++i) sum += x[i];
  for (float a : acc) sum += a;
  return sum;
}

std::vector<float> normal_data(int64_t n, uint64_t seed) {
  std::vector<float> data(static_cast<size_t>(n));
  fill_normal(data, seed);
  return data;
}

// A set of tensors compressed together: one tensor, or a model's parameters in backward order.
// Tensor t reads data[offsets[t], offsets[t] + numel).
struct Workload {
  std::string name;
  std::string kind;
  std::vector<TensorInfo> tensors;
  std::vector<int64_t> offsets;
  int64_t numel = 0;

  void add(std::string tensor_name, Shape shape) {
    offsets.push_back(numel);
    numel += shape_numel(shape);
    tensors.push_back({std::move(tensor_name), std::move(shape)});
  }
};

struct Timing {
  double seconds = 0;  // median of the samples, per operation
  int64_t batch = 1;   // operations per sample
};

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

int64_t batch_for(const CompressBenchOptions& options, double warmup_seconds) {
  return static_cast<int64_t>(std::clamp(
      std::ceil(options.min_sample_seconds / std::max(warmup_seconds, 1e-9)), 1.0, 100000.0));
}

// Runs `op` once as a warm-up, then `repeat` samples of `batch` operations each, `batch` chosen
// so that a sample lasts about min_sample_seconds; returns the median time of one operation.
template <typename Op>
Result<Timing> measure(const CompressBenchOptions& options, Op&& op) {
  auto start = Clock::now();
  FRUGAL_RETURN_IF_ERROR(op());
  Timing timing;
  timing.batch = batch_for(options, seconds_since(start));
  std::vector<double> samples;
  for (int r = 0; r < options.repeat; ++r) {
    start = Clock::now();
    for (int64_t b = 0; b < timing.batch; ++b) FRUGAL_RETURN_IF_ERROR(op());
    samples.push_back(seconds_since(start) / static_cast<double>(timing.batch));
  }
  timing.seconds = median(std::move(samples));
  return timing;
}

// measure() for an operation that must follow another one every time (decompress_accumulate
// after compress: PowerSGD's decoder consumes state its rounds set up). Both are timed, each on
// its own clock; the batch is sized by `first`.
template <typename First, typename Second>
Result<std::pair<Timing, Timing>> measure_pair(const CompressBenchOptions& options, First&& first,
                                               Second&& second) {
  auto start = Clock::now();
  FRUGAL_RETURN_IF_ERROR(first());
  const double warmup = seconds_since(start);
  FRUGAL_RETURN_IF_ERROR(second());
  const int64_t batch = batch_for(options, warmup);
  std::vector<double> first_samples, second_samples;
  for (int r = 0; r < options.repeat; ++r) {
    double first_total = 0, second_total = 0;
    for (int64_t b = 0; b < batch; ++b) {
      start = Clock::now();
      FRUGAL_RETURN_IF_ERROR(first());
      const auto middle = Clock::now();
      FRUGAL_RETURN_IF_ERROR(second());
      first_total += std::chrono::duration<double>(middle - start).count();
      second_total += seconds_since(middle);
    }
    first_samples.push_back(first_total / static_cast<double>(batch));
    second_samples.push_back(second_total / static_cast<double>(batch));
  }
  return std::make_pair(Timing{median(std::move(first_samples)), batch},
                        Timing{median(std::move(second_samples)), batch});
}

// What the benchmark needs to know about a spec beyond building it.
struct SpecFacts {
  std::optional<double> density;  // the outermost "density" parameter, if any
  bool row_wise = false;          // adtopk somewhere in the spec: compare with topk(dim=1)
};

SpecFacts inspect_spec(const std::string& spec) {
  SpecFacts facts;
  auto parsed = parse_spec(spec);
  if (!parsed.is_ok()) return facts;
  for (const SpecNode* node = &parsed.value(); node != nullptr; node = node->inner.get()) {
    if (node->name == "adtopk") facts.row_wise = true;
    for (const auto& [key, value] : node->params) {
      double d = 0;
      auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), d);
      if (key == "density" && !facts.density && ec == std::errc() &&
          end == value.data() + value.size()) {
        facts.density = d;
      }
    }
  }
  return facts;
}

int64_t flat_k(int64_t numel, double density) {
  return std::clamp(static_cast<int64_t>(std::floor(density * static_cast<double>(numel))),
                    int64_t{1}, std::max<int64_t>(numel, 1));
}

// Baselines of one workload, measured on first use and shared by every spec.
class Baselines {
 public:
  Baselines(const CompressBenchOptions& options, const Workload& workload, const float* data,
            ThreadPool* pool)
      : options_(options), workload_(workload), data_(data), pool_(pool) {}

  // Measured again for every row, next to the compressor it is compared with, so that load from
  // other processes on a shared machine skews both alike.
  Result<double> memory_read() {
    float sink = 0;
    FRUGAL_ASSIGN_OR_RETURN(Timing t, measure(options_, [&] {
                              for (size_t i = 0; i < workload_.tensors.size(); ++i) {
                                sink += sum(data_ + workload_.offsets[i],
                                            shape_numel(workload_.tensors[i].shape));
                              }
                              return Status::ok();
                            }));
    sink_ = sink;
    return t.seconds;
  }

  // torch::topk(x.abs(), k) over each tensor (row_wise: along dim 1 of every tensor of >= 2
  // dimensions, k per row as adtopk picks it; 1-D tensors, which adtopk sends dense, cost 0).
  // 0 when LibTorch is missing or nothing qualifies.
  Result<double> torch_topk(double density, bool row_wise) {
    if (!torch_available()) return 0.0;
    auto key = std::make_pair(density, row_wise);
    auto it = torch_.find(key);
    if (it != torch_.end()) return it->second;
    std::vector<size_t> selected;
    for (size_t i = 0; i < workload_.tensors.size(); ++i) {
      if (!row_wise || workload_.tensors[i].shape.size() >= 2) selected.push_back(i);
    }
    double seconds = 0;
    if (!selected.empty()) {
      FRUGAL_ASSIGN_OR_RETURN(Timing t, measure(options_, [&] {
                                for (size_t i : selected) {
                                  const Shape& shape = workload_.tensors[i].shape;
                                  int64_t k = row_wise ? flat_k(shape[1], density)
                                                       : flat_k(shape_numel(shape), density);
                                  FRUGAL_RETURN_IF_ERROR(torch_topk_abs(
                                      data_ + workload_.offsets[i], shape, k, row_wise ? 1 : -1));
                                }
                                return Status::ok();
                              }));
      seconds = t.seconds;
    }
    torch_[key] = seconds;
    return seconds;
  }

 private:
  float sum(const float* x, int64_t n) {
    if (pool_ == nullptr) return sum_floats(x, static_cast<size_t>(n));
    std::mutex mutex;
    float total = 0;
    pool_->parallel_for(static_cast<size_t>(n), size_t{1} << 16, [&](size_t begin, size_t end) {
      float part = sum_floats(x + begin, end - begin);
      std::lock_guard<std::mutex> lock(mutex);
      total += part;
    });
    return total;
  }

  const CompressBenchOptions& options_;
  const Workload& workload_;
  const float* data_;
  ThreadPool* pool_;
  std::map<std::pair<double, bool>, double> torch_;
  volatile float sink_ = 0;  // keeps the sums observable
};

// One compressor on one workload: payload buffers per tensor (two per tensor for multi-round
// kSum compressors, which ping-pong between rounds), an accumulator, and the step counter.
class CompressorRun {
 public:
  CompressorRun(Compressor& compressor, const Workload& workload, const float* data)
      : c_(compressor), workload_(workload), data_(data) {}

  Status prepare() {
    for (const TensorInfo& info : workload_.tensors) {
      FRUGAL_ASSIGN_OR_RETURN(TensorId id, c_.register_tensor(info));
      ids_.push_back(id);
    }
    rounds_ = c_.aggregation() == Aggregation::kSum ? std::max(1, c_.rounds()) : 1;
    const int buffers = rounds_ > 1 ? 2 : 1;
    size_t total = 0;
    for (TensorId id : ids_) {
      offsets_.push_back(total);
      total += buffers * c_.max_compressed_bytes(id);
    }
    payloads_.resize(total);
    sizes_.resize(ids_.size());
    final_buffer_.resize(ids_.size());
    if (c_.aggregation() == Aggregation::kTwoPhase) {
      for (TensorId id : ids_) {
        chunk_offsets_.push_back(reduced_.size());
        reduced_.resize(reduced_.size() + c_.chunk_payload_bytes(numel_of(id)));
      }
    }
    accum_.assign(static_cast<size_t>(workload_.numel), 0.0f);
    return Status::ok();
  }

  // Compresses every tensor once (every round for multi-round kSum compressors, with the
  // world-size-1 "reduced" payload being this rank's own).
  Status compress_all() {
    const StepInfo step{kFirstStep + steps_++, 0};
    wire_bytes_ = 0;
    for (size_t t = 0; t < ids_.size(); ++t) {
      const TensorInfo& info = workload_.tensors[t];
      ConstView grad{data_ + workload_.offsets[t], DType::kF32, info.shape};
      const size_t max_bytes = c_.max_compressed_bytes(ids_[t]);
      MutableBytes out(payloads_.data() + offsets_[t], max_bytes);
      FRUGAL_ASSIGN_OR_RETURN(size_t used, c_.compress(ids_[t], grad, out, step));
      wire_bytes_ += static_cast<int64_t>(used);
      int current = 0;
      for (int round = 0; round + 1 < rounds_; ++round) {
        ConstBytes reduced(payloads_.data() + offsets_[t] + current * max_bytes, used);
        MutableBytes next(payloads_.data() + offsets_[t] + (1 - current) * max_bytes, max_bytes);
        FRUGAL_ASSIGN_OR_RETURN(used, c_.next_round(ids_[t], round, reduced, next, step));
        wire_bytes_ += static_cast<int64_t>(used);
        current = 1 - current;
      }
      sizes_[t] = used;
      final_buffer_[t] = current;
    }
    return Status::ok();
  }

  // Decodes the payloads of the last compress_all into the accumulator.
  Status decompress_all() {
    const StepInfo step{kFirstStep + steps_, 0};
    for (size_t t = 0; t < ids_.size(); ++t) {
      const TensorInfo& info = workload_.tensors[t];
      const size_t max_bytes = c_.max_compressed_bytes(ids_[t]);
      ConstBytes payload(payloads_.data() + offsets_[t] + final_buffer_[t] * max_bytes, sizes_[t]);
      MutableView accum{accum_.data() + workload_.offsets[t], DType::kF32, info.shape};
      if (c_.aggregation() == Aggregation::kTwoPhase) {
        const size_t chunk_end =
            t + 1 < chunk_offsets_.size() ? chunk_offsets_[t + 1] : reduced_.size();
        MutableBytes reduced(reduced_.data() + chunk_offsets_[t], chunk_end - chunk_offsets_[t]);
        FRUGAL_RETURN_IF_ERROR(c_.reduce_chunk(ids_[t], 0, std::span(&payload, 1), reduced, step));
        payload = reduced;
      }
      FRUGAL_RETURN_IF_ERROR(c_.decompress_accumulate(ids_[t], payload, accum));
    }
    return Status::ok();
  }

  int64_t wire_bytes() const { return wire_bytes_; }

 private:
  int64_t numel_of(TensorId id) const { return shape_numel(c_.tensor(id).shape); }

  // Past any warm-up schedule (DGC's density ramp): the benchmark measures the steady state.
  static constexpr int64_t kFirstStep = 1'000'000;

  Compressor& c_;
  const Workload& workload_;
  const float* data_;
  std::vector<TensorId> ids_;
  int rounds_ = 1;
  std::vector<size_t> offsets_;
  std::vector<std::byte> payloads_;
  std::vector<size_t> sizes_;
  std::vector<int> final_buffer_;
  std::vector<size_t> chunk_offsets_;
  std::vector<std::byte> reduced_;
  std::vector<float> accum_;
  int64_t steps_ = 0;
  int64_t wire_bytes_ = 0;
};

bool looks_like_param(const std::string& piece) {
  size_t eq = piece.find('=');
  if (eq == std::string::npos || eq == 0) return false;
  for (size_t i = 0; i < eq; ++i) {
    char c = piece[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) return false;
  }
  return true;
}

std::string shape_name(const Shape& shape) { return shape_to_string(shape); }

}  // namespace

std::vector<std::string> split_spec_list(const std::string& text) {
  std::vector<std::string> pieces;
  std::string current;
  int depth = 0;
  for (char c : text) {
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (c == ',' && depth == 0) {
      pieces.push_back(current);
      current.clear();
    } else {
      current += c;
    }
  }
  pieces.push_back(current);
  std::vector<std::string> specs;
  for (std::string& piece : pieces) {
    // Names never contain '=', so "key=value" continues the previous spec's parameters.
    if (!specs.empty() && looks_like_param(piece) && specs.back().find(':') != std::string::npos) {
      specs.back() += "," + piece;
    } else if (!piece.empty()) {
      specs.push_back(piece);
    }
  }
  return specs;
}

std::vector<std::string> default_compressor_specs(double density) {
  // threshold takes a magnitude, not a density: the value that keeps `density` of the
  // benchmark's standard normal data, P(|x| >= z) = erfc(z / sqrt(2)) = density.
  double low = 0, high = 40;
  for (int i = 0; i < 100; ++i) {
    double mid = (low + high) / 2;
    (std::erfc(mid / std::sqrt(2.0)) > density ? low : high) = mid;
  }
  const std::string threshold_spec = "threshold:value=" + format_param(low);
  const CompressorContext context;
  auto builds = [&](const std::string& spec) { return make_compressor(spec, context).is_ok(); };
  const std::string d = format_param(density);
  std::vector<std::string> specs;
  for (const CompressorEntry& entry : compressor_registry()) {
    const bool has_density = std::any_of(entry.params.begin(), entry.params.end(),
                                         [](const ParamDoc& p) { return p.key == "density"; });
    std::string spec = entry.inner == InnerSpec::kRequired
                           ? entry.name + "(topk:density=" + d + ")"
                           : entry.name + (has_density ? ":density=" + d : "");
    if (entry.name == "threshold") spec = threshold_spec;
    if (!builds(spec)) {
      for (const std::string& example : entry.examples) {
        if (builds(example)) {
          spec = example;
          break;
        }
      }
    }
    specs.push_back(spec);
  }
  return specs;
}

Status validate(const CompressBenchOptions& options) {
  for (int64_t n : options.sizes) {
    if (n < 1) return invalid_argument(fmt::format("--sizes: {} is invalid; sizes are >= 1", n));
  }
  if (options.size_columns < 1) return invalid_argument("size_columns must be >= 1");
  for (const Shape& shape : options.matrices) {
    if (shape.empty() || std::any_of(shape.begin(), shape.end(), [](int64_t d) { return d < 1; })) {
      return invalid_argument("--matrices: " + shape_to_string(shape) +
                              " is invalid; dimensions are >= 1, e.g. 2048x2048");
    }
  }
  if (!(options.density > 0 && options.density <= 1)) {
    return invalid_argument(
        fmt::format("--density {} is invalid; it must satisfy 0 < density <= 1", options.density));
  }
  if (options.repeat < 1) {
    return invalid_argument(fmt::format("--repeat {} is invalid; it must be >= 1", options.repeat));
  }
  if (options.threads < 1) {
    return invalid_argument(
        fmt::format("--threads {} is invalid; it must be >= 1", options.threads));
  }
  if (!(options.min_sample_seconds >= 0))
    return invalid_argument("min_sample_seconds must be >= 0");
  return Status::ok();
}

Status run_compress_bench(const CompressBenchOptions& options, const CompressBenchSink& sink) {
  FRUGAL_RETURN_IF_ERROR(validate(options));
  auto note = [&](const std::string& text) {
    if (sink.note) sink.note(text);
  };

  std::vector<Workload> workloads;
  for (int64_t n : options.sizes) {
    Workload w;
    w.kind = "size";
    w.add("tensor", n % options.size_columns == 0 && n > options.size_columns
                        ? Shape{n / options.size_columns, options.size_columns}
                        : Shape{n});
    w.name = shape_name(w.tensors[0].shape);
    workloads.push_back(std::move(w));
  }
  for (const Shape& shape : options.matrices) {
    Workload w;
    w.kind = "matrix";
    w.add("matrix", shape);
    w.name = shape_name(shape);
    workloads.push_back(std::move(w));
  }
  for (const std::string& model : options.models) {
    FRUGAL_ASSIGN_OR_RETURN(ModelShapes shapes, load_model_shapes(model, options.shapes_dir));
    Workload w;
    w.kind = "model";
    w.name = shapes.model;
    for (ParamShape& p : shapes.params) w.add(std::move(p.name), std::move(p.shape));
    workloads.push_back(std::move(w));
  }

  std::unique_ptr<ThreadPool> pool;
  if (options.threads > 1) pool = std::make_unique<ThreadPool>(options.threads - 1);
  set_torch_threads(options.threads);
  if (!torch_available()) note("built without LibTorch: no torch::topk baseline");
  CompressorContext context;
  context.world_size = 1;
  context.seed = options.seed;
  context.pool = pool.get();

  // Specs that do not build are skipped once, up front.
  struct Spec {
    std::string text;
    std::string canonical;
    SpecFacts facts;
  };
  std::vector<Spec> specs;
  for (const std::string& text : options.compressors.empty()
                                     ? default_compressor_specs(options.density)
                                     : options.compressors) {
    auto made = make_compressor(text, context);
    if (!made.is_ok()) {
      note("skipped " + text + ": " + made.status().message());
      continue;
    }
    std::string canonical = made.value()->spec();
    specs.push_back({text, canonical, inspect_spec(canonical)});
  }
  if (specs.empty()) return invalid_argument("no compressor spec builds; nothing to measure");

  int64_t max_numel = 0;
  for (const Workload& w : workloads) max_numel = std::max(max_numel, w.numel);
  const std::vector<float> data = normal_data(max_numel, options.seed);

  for (const Workload& workload : workloads) {
    Baselines baselines(options, workload, data.data(), pool.get());
    for (const Spec& spec : specs) {
      const std::string where = spec.text + " on " + workload.name;
      auto made = make_compressor(spec.text, context);
      if (!made.is_ok()) return made.status();  // built above with the same context
      CompressorRun run(*made.value(), workload, data.data());
      if (Status s = run.prepare(); !s.is_ok()) {
        note("skipped " + where + ": " + s.message());
        continue;
      }
      auto timings = measure_pair(
          options, [&] { return run.compress_all(); }, [&] { return run.decompress_all(); });
      if (!timings.is_ok()) {
        note("skipped " + where + ": " + timings.status().message());
        continue;
      }
      const auto& [compress, decompress] = timings.value();
      FRUGAL_ASSIGN_OR_RETURN(double memory_read, baselines.memory_read());
      CompressBenchRow row;
      row.compressor = spec.text;
      row.canonical = spec.canonical;
      row.workload = workload.name;
      row.kind = workload.kind;
      row.numel = workload.numel;
      row.tensors = static_cast<int>(workload.tensors.size());
      row.density = spec.facts.density.value_or(options.density);
      row.batch = compress.batch;
      row.seconds = compress.seconds;
      row.decompress_seconds = decompress.seconds;
      row.compressed_bytes = run.wire_bytes();
      row.read_gbps = static_cast<double>(workload.numel) * 4 / row.seconds / 1e9;
      row.memory_read_seconds = memory_read;
      row.vs_memory_read = row.seconds / memory_read;
      FRUGAL_ASSIGN_OR_RETURN(row.torch_topk_seconds,
                              baselines.torch_topk(row.density, spec.facts.row_wise));
      row.vs_torch_topk = row.torch_topk_seconds / row.seconds;
      row.torch_baseline = spec.facts.row_wise ? "dim1" : "flat";
      if (sink.row) sink.row(row);
    }
  }
  return Status::ok();
}

std::string format_table_row(const CompressBenchRow& row, const CompressBenchRow* previous) {
  std::string out;
  if (previous == nullptr || previous->workload != row.workload) {
    out += fmt::format("# {} {}: {} floats in {} tensor{}\n", row.kind, row.workload, row.numel,
                       row.tensors, row.tensors == 1 ? "" : "s");
    out += fmt::format("#{:<33} {:>11} {:>6} {:>6} {:>7} {:>11} {:>11} {:>11} {:>4} {:>11}\n",
                       "compressor", "time (us)", "GB/s", "x read", "vs topk", "decomp (us)",
                       "payload (B)", "read (us)", "ref", "topk (us)");
  }
  std::string vs = row.torch_topk_seconds > 0 ? fmt::format("{:.1f}", row.vs_torch_topk) : "-";
  std::string topk =
      row.torch_topk_seconds > 0 ? fmt::format("{:.0f}", row.torch_topk_seconds * 1e6) : "-";
  out += fmt::format(
      "{:<34} {:>11.1f} {:>6.2f} {:>6.2f} {:>7} {:>11.1f} {:>11} {:>11.1f} {:>4} {:>11}\n",
      row.compressor, row.seconds * 1e6, row.read_gbps, row.vs_memory_read, vs,
      row.decompress_seconds * 1e6, row.compressed_bytes, row.memory_read_seconds * 1e6,
      row.torch_baseline, topk);
  return out;
}

std::string format_json_line(const CompressBenchRow& row) {
  auto or_null = [](double v) {
    return v > 0 ? nlohmann::ordered_json(v) : nlohmann::ordered_json(nullptr);
  };
  nlohmann::ordered_json record = {{"compressor", row.compressor},
                                   {"numel", row.numel},
                                   {"density", row.density},
                                   {"seconds", row.seconds},
                                   {"read_gbps", row.read_gbps},
                                   {"vs_memory_read", row.vs_memory_read},
                                   {"vs_torch_topk", or_null(row.vs_torch_topk)},
                                   {"spec", row.canonical},
                                   {"workload", row.workload},
                                   {"kind", row.kind},
                                   {"tensors", row.tensors},
                                   {"decompress_seconds", row.decompress_seconds},
                                   {"compressed_bytes", row.compressed_bytes},
                                   {"memory_read_seconds", row.memory_read_seconds},
                                   {"torch_topk_seconds", or_null(row.torch_topk_seconds)},
                                   {"torch_baseline", row.torch_baseline},
                                   {"batch", row.batch}};
  return record.dump() + "\n";
}

}  // namespace frugal::bench
