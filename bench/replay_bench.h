// Engine replay benchmark behind `frugal bench replay`: the Synchronizer's fusion strategies
// compared on the real gradient shapes of a model, with no model. Gradients become ready in
// backward order at the pace of a given backward time on every rank at once, and the
// Synchronizer (with a compressor from the registry) averages them; the report is iteration
// time, the speed-up over the `none` and `omgs` strategies measured in the same run, and the
// Synchronizer's step counters. Collective: every rank calls run_replay_bench with the same
// options; not thread-safe (one call per rank at a time).
//
// Assumption of the pacing: backward compute is proportional to parameters, so tensor i becomes
// ready at backward_ms x (parameters of tensors 0..i) / (all parameters) after the step starts.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/status.h"
#include "engine/fusion_plan.h"

namespace frugal::bench {

struct ReplayBenchOptions {
  // A model of bench/shapes (e.g. "resnet50", "bert-base") or a shape file's path.
  std::string model = "resnet50";
  std::string shapes_dir;  // empty: default_shapes_dir()
  // Strategies: any --fusion value parse_fusion takes ("none", "bytes:MB", "omgs",
  // "safusion", "ssfusion"), or "dense" (no compressor, fusion bytes:25).
  std::vector<std::string> fusions = {"none", "omgs", "safusion"};
  // Compressor of every strategy but "dense". A sparse one (topk, dgc, gaussiank, redsync) lets
  // the engine count tensors that lose every element ("tensor missing"); DGC always keeps at
  // least one element of a tensor it compresses alone, so sparsify-ahead misses none.
  std::string compressor = "ef(dgc:density=0.01)";
  // Backward time per step; nullopt: measured dense communication time / comm_ratio.
  std::optional<double> backward_ms;
  // Auto backward: dense communication takes this many times the backward (the regime of the
  // SAFusion and OMGS-SGD papers: communication-bound but overlappable).
  double comm_ratio = 1.5;
  int steps = 10;  // timed steps per strategy
  // Untimed steps first; -1: the engine's profile warm-up + profile_steps + 2 (the plan is fixed
  // in the begin_step after profiling, then two steps settle it).
  int warmup = -1;
  int profile_steps = 3;  // the cost-model planners' profiled steps (SynchronizerOptions)
  int dense_steps = 3;    // timed steps of the dense communication measurement
  uint64_t seed = 42;     // gradients (a different stream per rank) and the compressors
  // Non-empty: a Chrome trace of every rank per strategy (warm-up included), written by rank 0 to
  // trace_path(trace_prefix, model, fusion).
  std::string trace_prefix;
};

// One strategy on one model. Times and counters are the maximum over ranks of each rank's
// median (iteration time) or mean over the timed steps (the StepStats counters): the slowest
// rank sets the pace of synchronous training.
struct ReplayRow {
  std::string model;
  std::string fusion;      // as given ("dense" included)
  std::string compressor;  // canonical spec, "none" for dense
  int world_size = 0;
  int tensors = 0;
  int64_t parameters = 0;
  double backward_ms = 0;    // the pacing used
  double dense_comm_ms = 0;  // dense step with every gradient ready at once (bytes:25)
  int steps = 0;
  int warmup = 0;
  double iteration_ms = 0;  // begin_step to the return of finish_step
  double iterations_per_s = 0;
  // iteration_ms of that strategy / this one; nullopt when it was not run.
  std::optional<double> speedup_vs_none;
  std::optional<double> speedup_vs_omgs;
  // StepStats means.
  double bytes_sent = 0;
  double dense_wire_bytes = 0;
  double compress_ms = 0;
  double decompress_ms = 0;
  double comm_ms = 0;
  double wait_ms = 0;  // exposed communication: finish_step's wait
  double num_buckets = 0;
  double tensors_compressed = 0;
  double tensors_missing = 0;
  // 100 x missing / compressed; nullopt when nothing was compressed or the compressor's payloads
  // are not in the sparse format (the engine cannot tell which tensors they cover).
  std::optional<double> missing_percent;
  double predicted_step_ms = 0;  // the cost model's prediction (0 for planners without one)
  LinkModel link;                // the probed link model (zeros for planners without one)
};

struct ReplayResult {
  std::string model;
  int world_size = 0;
  std::string backend;
  int tensors = 0;
  int64_t parameters = 0;
  bool backward_auto = false;
  double backward_ms = 0;
  double dense_comm_ms = 0;
  std::vector<ReplayRow> rows;  // in options.fusions order
};

// Validates everything that does not need a communicator (flags, model, compressor spec); the
// error names the flag and what is valid. Cheap enough to run before starting ranks.
Status validate(const ReplayBenchOptions& options);

// Collective: runs every strategy on this rank; every rank returns the same result.
Result<ReplayResult> run_replay_bench(Communicator& comm, const ReplayBenchOptions& options);

// Text table of one model's result, with a header of its parameters and the link models.
std::string format_table(const ReplayResult& result);
// Markdown: one table per model.
std::string format_markdown(const std::vector<ReplayResult>& results);
// Where the trace of `fusion` on `model` goes: "<prefix>.<model file stem>.<fusion>.trace.json",
// ':' in the fusion replaced by '-'.
std::string trace_path(const std::string& prefix, const std::string& model,
                       const std::string& fusion);
// "<prefix>.<model file stem>.<fusion>.trace.json", ':' in the fusion replaced by '-'.
std::string trace_path(const std::string& prefix, const std::string& model,
                       const std::string& fusion);
// {"run": {...shared parameters...}, "records": [one object per model and strategy]}.
std::string format_json(const std::vector<ReplayResult>& results,
                        const ReplayBenchOptions& options);

// Draws iterations/s per model and strategy from a file written with format_json into an SVG,
// with bench/plot_results.py (python3-matplotlib).
Status plot_replay(const std::string& json_path, const std::string& svg_path);

}  // namespace frugal::bench
