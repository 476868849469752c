// Synchronizer: averages one step's gradients across ranks, overlapping communication with
// backward (the dense path of a DDP-style reducer). Owned by the job (e.g. a Trainer); it uses,
// but does not own, a Communicator and an optional Timeline.
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
//   grad_ready(id, grad) x N   any order, any threads; full buckets are sent in the background
//   finish_step()              waits; every grad now holds the average over ranks
//
// Failures never hang (the Communicator times out) and are sticky: after a failed step the
// ranks' collective sequences may have diverged, so every later begin_step returns the error.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
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

namespace frugal {

struct SynchronizerOptions {
  // Parameters that affect performance.

  // Buckets hold consecutive tensors up to this many bytes (Horovod's fusion threshold).
  // 0: one bucket per tensor, sent as soon as it is ready (wait-free backpropagation, WFBP).
  size_t fusion_threshold_bytes = size_t{25} << 20;
  // Cap of the first bucket (the last layers' gradients, ready first), so the first collective
  // starts early; PyTorch DDP's default of 1 MiB.
  size_t first_bucket_bytes = size_t{1} << 20;
  // Tensors at least this big get a bucket of their own, exchanged in place without fusion
  // copies (plan_buckets explains why). 0: fuse by the threshold alone, as Horovod and DDP do.
  size_t own_bucket_bytes = 0;

  // Divide the sum by the world size (true) or leave the sum (false).
  bool average = true;
  // Where QUEUE, FUSE, COMM and WAIT events go; nullptr records nothing. Not owned.
  Timeline* timeline = nullptr;
};

// Counters of one step, on this rank.
struct StepStats {
  int64_t step = 0;            // 0 for the first step
  int64_t bytes_sent = 0;      // per the exchange's cost model (dense: 2(n-1)/n * bucket bytes)
  int64_t bytes_received = 0;  // ditto
  int64_t dense_bytes = 0;     // gradient bytes synchronized (what an uncompressed step moves)
  int num_buckets = 0;         // buckets exchanged
  int64_t compress_us = 0;     // compress + decompress time (0 on the dense path)
  int64_t comm_us = 0;         // time inside collectives, on the communication thread
  int64_t wait_us = 0;         // exposed communication: how long finish_step waited
};

class Synchronizer {
 public:
  // Dense path: buckets are allreduced (sum) and averaged. `comm` must outlive this object.
  Synchronizer(Communicator& comm, SynchronizerOptions options);
  // Any exchange strategy (e.g. a compressed one). REQUIRES: exchange != nullptr.
  Synchronizer(Communicator& comm, SynchronizerOptions options,
               std::unique_ptr<BucketExchange> exchange);
  // Stops the communication thread; waits for an exchange in flight (bounded by the timeout).
  ~Synchronizer();

  Synchronizer(const Synchronizer&) = delete;
  Synchronizer& operator=(const Synchronizer&) = delete;

  // Registers the next tensor (its gradient is f32 of `shape`); ids are 0, 1, 2, ... Call in
  // backward order (the order gradients usually become ready) and identically on every rank.
  // Fails on an empty or duplicate name, an empty shape, or after the first begin_step.
  Result<TensorId> register_tensor(std::string name, Shape shape);

  // Starts a step. The first call plans the buckets and allocates the fusion buffers.
  // Fails if a step is in progress, no tensor is registered, or an earlier step failed.
  Status begin_step();

  // Hands over tensor `id`'s gradient (f32, the registered shape). The memory must stay valid
  // and untouched by the caller until finish_step returns; it then holds the averaged gradient.
  // When the tensor completes its bucket, the bucket is queued for the communication thread.
  // Fails on a bad id, dtype or shape, a tensor already made ready this step, a call outside a
  // step, or (fail fast) when the communication of this step already failed.
  Status grad_ready(TensorId id, MutableView grad);

  // Waits until every bucket is exchanged and copied back. Returns the first error: a
  // communication error, or FailedPrecondition naming tensors never made ready (their buckets
  // were never sent; the other ranks then fail through their timeouts).
  Status finish_step();
  // The same, calling on_bucket_done(bucket) on this thread for each bucket, in bucket order, as
  // soon as its tensors hold the averaged gradient, while later buckets are still in flight. So
  // the caller can update those parameters early (the optimizer step overlaps communication).
  // The callback must not touch other buckets' gradients. Its time is not counted as waiting.
  Status finish_step(const std::function<void(const Bucket&)>& on_bucket_done);

  // Counters of the last finished step (also after a failed one: what was done).
  const StepStats& last_step_stats() const { return last_stats_; }
  // The bucket plan; empty before the first begin_step.
  const std::vector<Bucket>& buckets() const { return buckets_; }
  int num_tensors() const { return static_cast<int>(tensors_.size()); }
  // REQUIRES: 0 <= id < num_tensors().
  const std::string& tensor_name(TensorId id) const { return tensors_[id].name; }

 private:
  struct Tensor {
    std::string name;
    Shape shape;
    size_t bytes = 0;
    int bucket = 0;
  };
  struct BucketState {
    std::vector<float> fusion_buffer;  // empty for single-tensor buckets (exchanged in place)
    int pending = 0;                   // tensors not yet ready this step
    bool ready = false;                // all tensors ready: may be launched
    int64_t ready_us = 0;              // when it became ready (start of its QUEUE event)
  };

  void plan();
  void communication_loop();
  // Exchanges bucket `index` and writes the averaged result into its tensors' gradients.
  // Runs on the communication thread without the lock.
  Status run_bucket(int index, ExchangeCounters& counters);
  bool step_complete_locked() const;

  Communicator& comm_;
  const SynchronizerOptions options_;
  std::unique_ptr<BucketExchange> exchange_;

  // Immutable after the first begin_step.
  std::vector<Tensor> tensors_;
  std::vector<Bucket> buckets_;
  bool planned_ = false;

  std::mutex mutex_;
  std::condition_variable cv_;  // any change of the state below
  std::vector<BucketState> bucket_states_;
  std::vector<MutableView> grads_;  // this step's gradient views, by tensor id
  std::vector<bool> grad_is_ready_;
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

  std::thread thread_;  // last member: started after everything above is constructed
};

}  // namespace frugal
