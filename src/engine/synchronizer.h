// Synchronizer: averages one step's gradients across ranks, overlapping compression and
// communication with backward. Dense, it is a DDP-style reducer; with a Compressor it sends
// compressed payloads through the collective the compressor's aggregation needs
// (compressed_exchange.h), with buckets from the chosen fusion planner (fusion_plan.h). Owned by
// the job (e.g. a Trainer); it uses, but does not own, a Communicator, an optional Compressor
// and an optional Timeline.
//
// Thread-safety: register_tensor, begin_step, finish_step and the accessors are called from one
// thread (the training thread). grad_ready may be called concurrently from any threads (autograd
// hooks) for different tensors between begin_step and finish_step. While the Synchronizer
// exists, its communication thread is the only user of the Communicator during a step; the
// caller may use the Communicator itself only between finish_step and the next begin_step.
//
// Step protocol:
//   register_tensor(...) x N   in backward order, identical on every rank, before the first step
//   begin_step()
//   grad_ready(id, grad) x N   any order, any threads; a compressed tensor is queued for the
//                              compression thread, a dense one copied into its fusion buffer;
//                              full buckets are sent in the background
//   finish_step()              waits; every grad now holds the average over ranks
//
// Threads: the caller's (grad_ready, finish_step), one compression thread (only with a
// compressor: compresses tensors in the order they become ready, or whole fused buffers), one
// communication thread (launches buckets strictly in index order, then decodes and averages).
//
// Cost-model planners (omgs, safusion, ssfusion) run the first steps with one
// bucket per tensor while they measure when each gradient arrives, how long it takes to compress
// and decode and how big its payload is; then, in the next begin_step, every rank takes the
// maxima over ranks, probes the link (latency and per-byte cost of allreduce and allgather) and
// computes the same plan, which stays fixed. buckets() may change then (once).
//
// Failures never hang (the Communicator times out) and are sticky: after a failed step the
// ranks' collective sequences may have diverged, so every later begin_step returns the error.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "compress/compressor.h"  // TensorId
#include "core/status.h"
#include "core/tensor_view.h"
#include "core/timeline.h"
#include "engine/bucket.h"
#include "engine/bucket_exchange.h"
#include "engine/compressed_exchange.h"
#include "engine/fusion_plan.h"

namespace frugal {

struct SynchronizerOptions {
  // How tensors are grouped into collectives. kBytes fuses by fusion_threshold_bytes (below);
  // kNone is one bucket per tensor; the others are cost-model planners (fusion_plan.h).
  FusionKind fusion = FusionKind::kBytes;

  // kBytes: buckets hold consecutive tensors up to this many bytes (Horovod's fusion threshold).
  // 0: one bucket per tensor, sent as soon as it is ready (wait-free backpropagation, WFBP).
  size_t fusion_threshold_bytes = size_t{25} << 20;
  // kBytes: cap of the first bucket (the last layers' gradients, ready first), so the first
  // collective starts early; PyTorch DDP's default of 1 MiB.
  size_t first_bucket_bytes = size_t{1} << 20;
  // kBytes: tensors at least this big get a bucket of their own, exchanged in place without
  // fusion copies (plan_buckets explains why). 0: fuse by the threshold alone, as Horovod does.
  size_t own_bucket_bytes = 0;

  // Compresses gradients; nullptr: dense allreduce. Not owned; must outlive the Synchronizer and
  // have no tensors registered (the Synchronizer registers what it compresses).
  Compressor* compressor = nullptr;
  // Hybrid dispatch: tensors smaller than this go dense through allreduce. -1: automatic (the
  // cost model's size cut-off for safusion, its per-tensor choice for ssfusion, 0 otherwise).
  int64_t dense_below_bytes = -1;
  // Cost-model planners: steps profiled (one bucket per tensor) before the plan is fixed, after
  // warm-up steps whose timings are skewed by first-touch page faults and connection set-up.
  int profile_warmup_steps = 2;
  int profile_steps = 3;
  // Planned length of training, passed to compressors (warm-up schedules); 0: unknown.
  int64_t total_steps = 0;

  // Divide the sum by the world size (true) or leave the sum (false).
  bool average = true;
  // Where QUEUE, COMPRESS, FUSE, COMM, DECOMPRESS and WAIT events go; nullptr records nothing.
  // Not owned.
  Timeline* timeline = nullptr;
};

// Counters of one step, on this rank.
struct StepStats {
  int64_t step = 0;            // 0 for the first step
  int64_t bytes_sent = 0;      // per the collectives' ring cost model
  int64_t bytes_received = 0;  // ditto
  int64_t dense_bytes = 0;     // gradient bytes synchronized (what an uncompressed step moves)
  // What a dense ring allreduce of the same gradients would send: 2(n-1)/n * dense_bytes.
  int64_t dense_wire_bytes = 0;
  int num_buckets = 0;         // buckets exchanged
  int64_t compress_us = 0;     // compression time, on the compression thread
  int64_t decompress_us = 0;   // decoding (and two-phase reduction) time, on the comm thread
  int64_t comm_us = 0;         // time inside collectives, on the communication thread
  int64_t wait_us = 0;         // exposed communication: how long finish_step waited
  int tensors_compressed = 0;  // tensors sent through the compressor (alone or fused)
  // Of those, tensors whose share of this rank's sparse payload is empty (sparsify-behind can
  // drop small tensors entirely: SAFusion's "tensor missing").
  int tensors_missing = 0;
  int64_t residual_bytes = 0;  // the compressor's error-feedback memory (CompressorStats)
};

// Running sums of StepStats over steps, for per-step means in reports (doubles: a long run's
// byte totals would overflow nothing, and means come out directly).
struct StepStatsSum {
  double bytes_sent = 0, bytes_received = 0, dense_bytes = 0, dense_wire_bytes = 0;
  double compress_us = 0, decompress_us = 0, comm_us = 0, wait_us = 0;
  double num_buckets = 0, tensors_compressed = 0, tensors_missing = 0;

  void add(const StepStats& s);
};

class Synchronizer {
 public:
  // `comm` (and options.compressor, options.timeline) must outlive this object.
  Synchronizer(Communicator& comm, SynchronizerOptions options);
  // Stops the threads; waits for work in flight (bounded by the Communicator's timeout).
  ~Synchronizer();

  Synchronizer(const Synchronizer&) = delete;
  Synchronizer& operator=(const Synchronizer&) = delete;

  // Registers the next tensor (its gradient is f32 of `shape`); ids are 0, 1, 2, ... Call in
  // backward order (the order gradients usually become ready) and identically on every rank.
  // Fails on an empty or duplicate name, an empty shape, or after the first begin_step.
  Result<TensorId> register_tensor(std::string name, Shape shape);

  // Starts a step. The first call plans the buckets and allocates the buffers; a cost-model
  // planner's first call after its profile steps is collective (it agrees on the profile and
  // probes the link) and replans. Fails if a step is in progress, no tensor is registered, the
  // compressor rejects a tensor, or an earlier step failed.
  Status begin_step();
  // The global step number the next begin_step starts, which compressors see in StepInfo
  // (their sampling seeds and warm-up schedules depend on it): a run resumed from a checkpoint
  // continues the count. Call between steps.
  void set_next_step(int64_t step);
  // Compressor state saved by a checkpoint (Compressor::export_state). The compressor learns its
  // tensors when the buckets are planned, so the state is imported then, at the next
  // begin_step; a failure to import fails that step.
  void import_compressor_state(StateDict state);

  // Hands over tensor `id`'s gradient (f32, the registered shape). The memory must stay valid
  // and untouched by the caller until finish_step returns; it then holds the averaged gradient.
  // Fails on a bad id, dtype or shape, a tensor already made ready this step, a call outside a
  // step, or (fail fast) when this step already failed.
  Status grad_ready(TensorId id, MutableView grad);

  // Waits until every bucket is exchanged and copied back. Returns the first error: a
  // communication or compression error, or FailedPrecondition naming tensors never made ready
  // (their buckets were never sent; the other ranks then fail through their timeouts).
  Status finish_step();
  // The same, calling on_bucket_done(bucket) on this thread for each bucket, in bucket order, as
  // soon as its tensors hold the averaged gradient, while later buckets are still in flight. So
  // the caller can update those parameters early (the optimizer step overlaps communication).
  // The callback must not touch other buckets' gradients. Its time is not counted as waiting.
  Status finish_step(const std::function<void(const Bucket&)>& on_bucket_done);

  // Counters of the last finished step (also after a failed one: what was done).
  const StepStats& last_step_stats() const { return last_stats_; }
  // The bucket plan in use; empty before the first begin_step. Changes once for cost-model
  // planners, in the begin_step after the profile steps.
  const std::vector<Bucket>& buckets() const { return buckets_; }
  // The cost model's prediction for the final plan (0 until it is made), for reports.
  double predicted_step_us() const { return predicted_us_; }
  // The link model probed for the final plan (zeros until it is made).
  const LinkModel& link_model() const { return link_; }
  int num_tensors() const { return static_cast<int>(tensors_.size()); }
  // REQUIRES: 0 <= id < num_tensors().
  const std::string& tensor_name(TensorId id) const { return tensors_[id].name; }

 private:
  struct Tensor {
    std::string name;
    Shape shape;
    size_t bytes = 0;
    int bucket = 0;
    int slot = 0;                 // index in its bucket's tensors
    TensorId unit = -1;           // compressor id when compressed alone, else -1
    size_t payload_offset = 0;    // in its bucket's payload buffer
    size_t payload_capacity = 0;  // max_compressed_bytes
  };
  struct BucketState {
    std::vector<float> fusion_buffer;   // dense slots, then (fused compression) compressed slots
    size_t dense_bytes = 0;             // dense slots' bytes, at the start of fusion_buffer
    bool dense_in_place = false;        // one dense slot, no fused compression: no copies
    std::vector<std::byte> payloads;    // compressed payloads, each at its capacity offset
    std::vector<size_t> payload_sizes;  // this step's size per compressed slot (by slot index)
    TensorId fused_unit = -1;           // compress_fused: the compressor id of the buffer
    // compress_fused: [begin, end) of each compressed tensor in the fused region, in elements.
    std::vector<int64_t> fused_begin, fused_end;
    int pending = 0;       // copies and compressions not yet done this step
    bool ready = false;    // may be launched
    int64_t ready_us = 0;  // when it became ready (start of its QUEUE event)
  };
  // A compression job: a tensor (>= 0) or a fused bucket (-1 - bucket index).
  using CompressJob = int;

  Status plan();
  Status install(std::vector<Bucket> buckets);
  Result<TensorId> unit_for(const std::string& name, const Shape& shape);
  Status replan_from_profile();
  void log_plan(const PlanRequest& request) const;
  void calibrate_latency(PlanRequest& request);
  void communication_loop();
  void compression_loop();
  Status run_compression(CompressJob job, int64_t& missing);
  // Marks one more part of a bucket done (under the lock); queues it when complete.
  void part_done_locked(int bucket_index);
  // Exchanges bucket `index` and writes the averaged result into its tensors' gradients.
  // Runs on the communication thread without the lock.
  Status run_bucket(int index, ExchangeCounters& counters);
  bool step_complete_locked() const;
  StepInfo step_info() const;
  bool profiling() const;

  Communicator& comm_;
  const SynchronizerOptions options_;
  std::unique_ptr<CompressedExchange> compressed_exchange_;

  // Immutable during a step.
  std::vector<Tensor> tensors_;
  std::vector<Bucket> buckets_;
  std::vector<bool> compressed_;  // by tensor id: goes through the compressor
  bool planned_ = false;
  bool final_plan_ = false;                // cost-model planners: the profiled plan is installed
  std::map<std::string, TensorId> units_;  // compressor ids by unit name
  LinkModel link_;
  double predicted_us_ = 0;

  // Profile of the cost-model planners: per profiled step, per tensor.
  std::vector<std::vector<TensorProfile>> profile_;
  int64_t step_begin_us_ = 0;

  std::mutex mutex_;
  std::condition_variable cv_;  // any change of the state below
  std::vector<BucketState> bucket_states_;
  std::vector<MutableView> grads_;  // this step's gradient views, by tensor id
  std::vector<bool> grad_is_ready_;
  std::deque<CompressJob> compress_queue_;
  bool compress_busy_ = false;  // the compression thread is running a job
  bool in_step_ = false;
  bool abort_step_ = false;  // finish_step found missing tensors: launch nothing more
  bool comm_busy_ = false;   // the communication thread is running a bucket
  int next_launch_ = 0;      // next bucket index the communication thread sends
  int buckets_done_ = 0;     // buckets exchanged and copied back this step (in index order)
  Status step_error_;        // first error of this step
  Status sticky_error_;      // an earlier step failed: fail fast
  bool stop_ = false;
  StepStats stats_;  // of the step in progress
  StepStats last_stats_;
  int64_t steps_begun_ = 0;
  std::optional<StateDict> pending_compressor_state_;  // import_compressor_state, until planned

  // Last members: started after everything above is constructed.
  std::thread compress_thread_;
  std::thread thread_;
};

}  // namespace frugal
