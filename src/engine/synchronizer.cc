#include "engine/synchronizer.h"

#include <cstring>
#include <string>
#include <utility>

#include "core/clock.h"

namespace frugal {
namespace {

// Timeline rows within a rank: hooks and finish_step on the training side, collectives on the
// communication thread, so overlap is visible as two parallel rows.
constexpr int kTrainingLane = 0;
constexpr int kCommLane = 1;

std::string bucket_detail(const Bucket& bucket) {
  return "bucket " + std::to_string(bucket.index) + ", " + std::to_string(bucket.tensors.size()) +
         " tensors, " + std::to_string(bucket.bytes) + " bytes";
}

}  // namespace

Synchronizer::Synchronizer(Communicator& comm, SynchronizerOptions options)
    : Synchronizer(comm, options, make_dense_allreduce_exchange(comm)) {}

Synchronizer::Synchronizer(Communicator& comm, SynchronizerOptions options,
                           std::unique_ptr<BucketExchange> exchange)
    : comm_(comm), options_(options), exchange_(std::move(exchange)) {
  FRUGAL_CHECK(exchange_ != nullptr, "Synchronizer needs an exchange");
  thread_ = std::thread([this] { communication_loop(); });
}

Synchronizer::~Synchronizer() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Result<TensorId> Synchronizer::register_tensor(std::string name, Shape shape) {
  if (planned_) {
    return failed_precondition("register_tensor('" + name +
                               "') after the first begin_step: register every tensor first");
  }
  if (name.empty()) return invalid_argument("register_tensor: empty tensor name");
  for (const Tensor& tensor : tensors_) {
    if (tensor.name == name) {
      return invalid_argument("register_tensor: tensor '" + name + "' is already registered");
    }
  }
  for (int64_t dim : shape) {
    if (dim < 0) {
      return invalid_argument("register_tensor('" + name + "'): negative dimension in shape " +
                              shape_to_string(shape));
    }
  }
  const int64_t numel = shape_numel(shape);
  if (numel == 0) {
    return invalid_argument("register_tensor('" + name + "'): shape " + shape_to_string(shape) +
                            " has no elements");
  }
  Tensor tensor;
  tensor.name = std::move(name);
  tensor.shape = std::move(shape);
  tensor.bytes = static_cast<size_t>(numel) * sizeof(float);
  tensors_.push_back(std::move(tensor));
  return static_cast<TensorId>(tensors_.size() - 1);
}

void Synchronizer::plan() {
  std::vector<size_t> sizes;
  sizes.reserve(tensors_.size());
  for (const Tensor& tensor : tensors_) sizes.push_back(tensor.bytes);
  buckets_ = plan_buckets(sizes, options_.fusion_threshold_bytes, options_.first_bucket_bytes,
                          options_.own_bucket_bytes);
  bucket_states_.resize(buckets_.size());
  for (const Bucket& bucket : buckets_) {
    for (const TensorSlot& slot : bucket.tensors) tensors_[slot.id].bucket = bucket.index;
    // A single-tensor bucket is exchanged in the gradient's own memory: no copy, no buffer.
    if (bucket.tensors.size() > 1) {
      bucket_states_[bucket.index].fusion_buffer.resize(bucket.bytes / sizeof(float));
    }
  }
  grads_.resize(tensors_.size());
  grad_is_ready_.assign(tensors_.size(), false);
  planned_ = true;
}

Status Synchronizer::begin_step() {
  std::lock_guard lock(mutex_);
  if (!sticky_error_.is_ok()) {
    return Status(sticky_error_.code(),
                  "Synchronizer unusable after a failed step: " + sticky_error_.message());
  }
  if (in_step_) return failed_precondition("begin_step called twice without finish_step");
  if (tensors_.empty()) return failed_precondition("begin_step: no tensor registered");
  if (!planned_) plan();
  for (size_t b = 0; b < buckets_.size(); ++b) {
    bucket_states_[b].pending = static_cast<int>(buckets_[b].tensors.size());
    bucket_states_[b].ready = false;
  }
  grad_is_ready_.assign(tensors_.size(), false);
  next_launch_ = 0;
  buckets_done_ = 0;
  abort_step_ = false;
  step_error_ = Status::ok();
  stats_ = StepStats{};
  stats_.step = steps_begun_++;
  in_step_ = true;
  return Status::ok();
}

Status Synchronizer::grad_ready(TensorId id, MutableView grad) {
  if (id < 0 || id >= num_tensors()) {
    return out_of_range("grad_ready: tensor id " + std::to_string(id) + " not in [0, " +
                        std::to_string(num_tensors()) + ")");
  }
  const Tensor& tensor = tensors_[id];
  if (grad.dtype != DType::kF32) {
    return invalid_argument("grad_ready('" + tensor.name + "'): gradient is " +
                            std::string(dtype_name(grad.dtype)) + ", expected f32");
  }
  if (grad.shape != tensor.shape) {
    return invalid_argument("grad_ready('" + tensor.name + "'): gradient shape " +
                            shape_to_string(grad.shape) + " differs from the registered " +
                            shape_to_string(tensor.shape));
  }
  if (grad.data == nullptr) {
    return invalid_argument("grad_ready('" + tensor.name + "'): null gradient pointer");
  }
  {
    std::lock_guard lock(mutex_);
    if (!in_step_) {
      return failed_precondition("grad_ready('" + tensor.name +
                                 "') outside a step: call begin_step first");
    }
    if (!step_error_.is_ok()) return step_error_;
    if (grad_is_ready_[id]) {
      return failed_precondition("grad_ready('" + tensor.name + "') called twice in step " +
                                 std::to_string(stats_.step));
    }
    grad_is_ready_[id] = true;
    grads_[id] = grad;
  }
  const Bucket& bucket = buckets_[tensor.bucket];
  BucketState& state = bucket_states_[tensor.bucket];
  if (bucket.tensors.size() > 1) {
    // Copied by the hook's own thread, outside the lock: slots are disjoint, and the copy then
    // overlaps the rest of backward instead of delaying the communication thread.
    ScopedTraceEvent fuse(options_.timeline, phase::kFuse, kTrainingLane, tensor.name);
    const TensorSlot& slot = bucket.tensors[id - bucket.tensors.front().id];
    std::memcpy(reinterpret_cast<std::byte*>(state.fusion_buffer.data()) + slot.offset_bytes,
                grad.data, slot.bytes);
  }
  {
    std::lock_guard lock(mutex_);
    if (--state.pending == 0) {
      state.ready = true;
      state.ready_us = now_us();
      cv_.notify_all();
    }
  }
  return Status::ok();
}

void Synchronizer::communication_loop() {
  std::unique_lock lock(mutex_);
  while (true) {
    // Strictly in bucket order, whatever order buckets fill in: every rank must issue the same
    // sequence of collectives (as DDP's reducer does), or the ranks would reduce different data.
    cv_.wait(lock, [this] {
      return stop_ || (in_step_ && !abort_step_ && step_error_.is_ok() &&
                       next_launch_ < static_cast<int>(buckets_.size()) &&
                       bucket_states_[next_launch_].ready);
    });
    if (stop_) return;
    const int index = next_launch_++;
    const int64_t ready_us = bucket_states_[index].ready_us;
    comm_busy_ = true;
    lock.unlock();

    if (options_.timeline && options_.timeline->enabled()) {
      options_.timeline->record(phase::kQueue, ready_us, now_us() - ready_us, kCommLane,
                                bucket_detail(buckets_[index]));
    }
    ExchangeCounters counters;
    Status status = run_bucket(index, counters);

    lock.lock();
    comm_busy_ = false;
    stats_.bytes_sent += counters.bytes_sent;
    stats_.bytes_received += counters.bytes_received;
    stats_.compress_us += counters.compress_us;
    stats_.comm_us += counters.comm_us;
    if (status.is_ok()) {
      ++buckets_done_;
      ++stats_.num_buckets;
      stats_.dense_bytes += static_cast<int64_t>(buckets_[index].bytes);
    } else if (step_error_.is_ok()) {
      step_error_ = status;
    }
    cv_.notify_all();
  }
}

Status Synchronizer::run_bucket(int index, ExchangeCounters& counters) {
  const Bucket& bucket = buckets_[index];
  BucketState& state = bucket_states_[index];
  const bool in_place = bucket.tensors.size() == 1;
  const int64_t numel = static_cast<int64_t>(bucket.bytes / sizeof(float));
  // grads_ entries of this bucket were written under the lock before the bucket became ready.
  MutableView fused = in_place
                          ? flat_view(grads_[bucket.tensors.front().id].data, DType::kF32, numel)
                          : flat_view(state.fusion_buffer.data(), DType::kF32, numel);
  {
    ScopedTraceEvent comm(options_.timeline, phase::kComm, kCommLane, bucket_detail(bucket));
    FRUGAL_RETURN_IF_ERROR(exchange_->exchange(bucket, fused, counters));
  }
  // Division (not multiplication by 1/n) so that the result is the correctly rounded average of
  // the reduced sum, the same on every rank.
  const float divisor = options_.average ? static_cast<float>(comm_.size()) : 1.0f;
  if (in_place) {
    if (divisor != 1.0f) {
      float* data = static_cast<float*>(fused.data);
      for (int64_t i = 0; i < numel; ++i) data[i] /= divisor;
    }
    return Status::ok();
  }
  ScopedTraceEvent unpack(options_.timeline, phase::kFuse, kCommLane,
                          "unpack " + bucket_detail(bucket));
  for (const TensorSlot& slot : bucket.tensors) {
    const float* source = state.fusion_buffer.data() + slot.offset_bytes / sizeof(float);
    float* target = static_cast<float*>(grads_[slot.id].data);
    const size_t count = slot.bytes / sizeof(float);
    if (divisor == 1.0f) {
      std::memcpy(target, source, slot.bytes);
    } else {
      for (size_t i = 0; i < count; ++i) target[i] = source[i] / divisor;
    }
  }
  return Status::ok();
}

Status Synchronizer::finish_step() { return finish_step(nullptr); }

Status Synchronizer::finish_step(const std::function<void(const Bucket&)>& on_bucket_done) {
  const int64_t start_us = now_us();
  int64_t callback_us = 0;
  std::unique_lock lock(mutex_);
  if (!in_step_) return failed_precondition("finish_step without begin_step");

  std::string missing;
  int num_missing = 0;
  for (size_t id = 0; id < tensors_.size(); ++id) {
    if (grad_is_ready_[id]) continue;
    if (++num_missing <= 5) missing += (missing.empty() ? "'" : ", '") + tensors_[id].name + "'";
  }
  if (num_missing > 5) missing += " and " + std::to_string(num_missing - 5) + " more";
  if (num_missing > 0) {
    // Buckets holding these tensors can never be sent; stop launching and only wait for an
    // exchange in flight, which writes into gradient memory the caller is about to reuse.
    abort_step_ = true;
    cv_.notify_all();
  }
  const auto finished = [this] {
    return buckets_done_ == static_cast<int>(buckets_.size()) ||
           ((abort_step_ || !step_error_.is_ok()) && !comm_busy_);
  };
  int delivered = 0;  // buckets handed to on_bucket_done
  const auto can_deliver = [&] {
    return on_bucket_done && step_error_.is_ok() && !abort_step_ && buckets_done_ > delivered;
  };
  while (true) {
    cv_.wait(lock, [&] { return finished() || can_deliver(); });
    if (!can_deliver()) break;  // finished, and nothing (more) to hand over
    // Buckets complete in index order (one communication thread runs them in order), so
    // buckets [delivered, buckets_done_) are averaged and no longer touched by that thread.
    const int done = buckets_done_;
    lock.unlock();
    const int64_t callback_start = now_us();
    for (; delivered < done; ++delivered) on_bucket_done(buckets_[delivered]);
    callback_us += now_us() - callback_start;
    lock.lock();
  }
  stats_.wait_us = now_us() - start_us - callback_us;
  if (options_.timeline && options_.timeline->enabled()) {
    options_.timeline->record(phase::kWait, start_us, stats_.wait_us, kTrainingLane,
                              "step " + std::to_string(stats_.step));
  }
  in_step_ = false;
  last_stats_ = stats_;

  Status result = step_error_;
  if (result.is_ok() && num_missing > 0) {
    result = failed_precondition("finish_step: step " + std::to_string(stats_.step) + " on rank " +
                                 std::to_string(comm_.rank()) + ": " + std::to_string(num_missing) +
                                 " tensor(s) never made ready (no grad_ready call): " + missing +
                                 "; their buckets were not sent, so the other ranks will time out");
  }
  if (!result.is_ok()) sticky_error_ = result;
  return result;
}

}  // namespace frugal
