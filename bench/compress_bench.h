// Compressor benchmark behind `frugal bench compress`: times compress() and decompress_accumulate()
// of registered compressor specs on single tensors (flat sizes as matrices, square matrices) and
// on the real parameter shapes of models, against two baselines measured in the same run: reading
// the input once (a vectorized sum) and LibTorch's torch::topk(x.abs(), k). One compressor runs
// at a time on the calling thread (plus --threads - 1 pool threads); not thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor_view.h"

namespace frugal::bench {

struct CompressBenchOptions {
  // Compressor specs; empty means default_compressor_specs(density).
  std::vector<std::string> compressors;
  // Single tensors of these element counts. A count divisible by size_columns runs as the matrix
  // [n / size_columns, size_columns] (shape-aware compressors such as adtopk and powersgd need
  // rows; the others see n flat floats either way), any other count as the 1-D [n].
  std::vector<int64_t> sizes = {10'000, 100'000, 1'000'000, 10'000'000, 25'000'000};
  int64_t size_columns = 1000;
  std::vector<Shape> matrices = {{2048, 2048}};
  // Model shape lists (bench/shapes/<name>.txt or a path): every tensor compressed in backward
  // order, times summed.
  std::vector<std::string> models = {"resnet50", "vgg16", "bert-base"};
  std::string shapes_dir;  // empty: default_shapes_dir()
  // Density of the default specs, and of the torch::topk baseline for specs without a density
  // parameter (specs with one are compared at their own density).
  double density = 0.01;
  int repeat = 5;                     // timed samples per measurement; the median is reported
  double min_sample_seconds = 0.002;  // a sample repeats the operation until it lasts this long
  int threads = 1;                    // compressor pool + the caller; LibTorch's intra-op threads
  uint64_t seed = 42;                 // data and compressor context seed
};

struct CompressBenchRow {
  std::string compressor;  // the spec as given
  std::string canonical;   // Compressor::spec(): every parameter spelled out
  std::string workload;    // "[25000, 1000]" for one tensor, or the model name
  std::string kind;        // "size", "matrix" or "model"
  int64_t numel = 0;       // input elements (summed over the model's tensors)
  int tensors = 0;
  double density = 0;  // the spec's density parameter, else options.density (the baseline's)
  int64_t batch = 0;   // operations per timed sample
  double seconds = 0;  // median time of one compress of every tensor (kSum: every round)
  double decompress_seconds = 0;   // median decompress_accumulate of every tensor (kTwoPhase:
                                   // reduce_chunk + decompress_accumulate), world size 1
  int64_t compressed_bytes = 0;    // payload bytes of one compress (kSum: summed over rounds)
  double read_gbps = 0;            // input bytes / seconds, 1e9 bytes per second
  double memory_read_seconds = 0;  // the baseline: summing the same input once
  double vs_memory_read = 0;       // seconds / memory_read_seconds (1 = as fast as one read)
  double torch_topk_seconds = 0;   // the baseline torch::topk(x.abs(), k) at `density`
  double vs_torch_topk = 0;        // torch_topk_seconds / seconds (speedup; 0 without LibTorch)
  std::string torch_baseline;      // "flat" (k of the whole tensor) or "dim1" (adtopk: k per row)
};

// What the benchmark reports while it runs.
struct CompressBenchSink {
  std::function<void(const CompressBenchRow&)> row;
  std::function<void(const std::string&)> note;  // skipped specs and workloads, baselines
};

// One spec per registered compressor: "name:density=D" for those with a density parameter,
// "name" for the others, memories wrapped around topk ("ef(topk:density=D)"); where that does not
// build, the entry's first example that does.
std::vector<std::string> default_compressor_specs(double density);

// Splits "topk:density=0.01,dgc:density=0.01,momentum=0.9,ef(qsgd)" into specs: at top-level
// commas, except before a piece that is a parameter ("key=value") of the previous spec.
std::vector<std::string> split_spec_list(const std::string& text);

// Validates sizes, shapes, density, repeat and threads; the error says what is valid.
Status validate(const CompressBenchOptions& options);

// Runs every workload (sizes, matrices, models) with every spec. Specs that do not build and
// workloads a compressor rejects are skipped with a note; errors are bad options or models.
Status run_compress_bench(const CompressBenchOptions& options, const CompressBenchSink& sink);

// Text table: a header per workload with its baselines, then one line per compressor.
// `previous` is the row printed before (nullptr for the first); a header is added when the
// workload changes.
std::string format_table_row(const CompressBenchRow& row, const CompressBenchRow* previous);
// One JSON object per line: {compressor, numel, density, seconds, read_gbps, vs_memory_read,
// vs_torch_topk, ...} (vs_torch_topk is null without LibTorch).
std::string format_json_line(const CompressBenchRow& row);

}  // namespace frugal::bench
