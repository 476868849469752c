#include "engine/synchronizer.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "core/clock.h"
#include "core/elementwise.h"
#include "core/logging.h"
#include "core/stats.h"
#include "engine/link_probe.h"

namespace frugal {
namespace {

// Timeline rows within a rank: hooks and finish_step on the training side, collectives on the
// communication thread, compression on its own thread, so overlap shows as parallel rows.
constexpr int kTrainingLane = 0;
constexpr int kCommLane = 1;
constexpr int kCompressLane = 2;

std::string bucket_detail(const Bucket& bucket) {
  return "bucket " + std::to_string(bucket.index) + ", " + std::to_string(bucket.tensors.size()) +
         " tensors, " + std::to_string(bucket.bytes) + " bytes";
}

}  // namespace

void StepStatsSum::add(const StepStats& s) {
  bytes_sent += static_cast<double>(s.bytes_sent);
  bytes_received += static_cast<double>(s.bytes_received);
  dense_bytes += static_cast<double>(s.dense_bytes);
  dense_wire_bytes += static_cast<double>(s.dense_wire_bytes);
  compress_us += static_cast<double>(s.compress_us);
  decompress_us += static_cast<double>(s.decompress_us);
  comm_us += static_cast<double>(s.comm_us);
  wait_us += static_cast<double>(s.wait_us);
  num_buckets += s.num_buckets;
  tensors_compressed += s.tensors_compressed;
  tensors_missing += s.tensors_missing;
}

Synchronizer::Synchronizer(Communicator& comm, SynchronizerOptions options)
    : comm_(comm), options_(options) {
  if (options_.compressor != nullptr) {
    compressed_exchange_ = std::make_unique<CompressedExchange>(comm_, *options_.compressor,
                                                                options_.timeline, kCommLane);
    compress_thread_ = std::thread([this] { compression_loop(); });
  }
  thread_ = std::thread([this] { communication_loop(); });
}

Synchronizer::~Synchronizer() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  if (compress_thread_.joinable()) compress_thread_.join();
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

bool Synchronizer::profiling() const { return uses_cost_model(options_.fusion) && !final_plan_; }

StepInfo Synchronizer::step_info() const { return StepInfo{stats_.step, options_.total_steps}; }

Result<TensorId> Synchronizer::unit_for(const std::string& name, const Shape& shape) {
  if (auto it = units_.find(name); it != units_.end()) return it->second;
  auto id = options_.compressor->register_tensor(TensorInfo{name, shape});
  if (!id.is_ok()) {
    return id.status().with_context("compressor " + options_.compressor->spec() +
                                    " cannot take tensor '" + name + "' of shape " +
                                    shape_to_string(shape));
  }
  units_.emplace(name, *id);
  return *id;
}

Status Synchronizer::plan() {
  std::vector<size_t> sizes;
  sizes.reserve(tensors_.size());
  for (const Tensor& tensor : tensors_) sizes.push_back(tensor.bytes);
  // Until a profile exists every tensor the compressor takes is compressed, except under an
  // explicit cut-off (the automatic ones need the cost model).
  compressed_.assign(tensors_.size(), options_.compressor != nullptr);
  if (options_.dense_below_bytes >= 0) {
    for (size_t t = 0; t < tensors_.size(); ++t) {
      compressed_[t] =
          compressed_[t] && tensors_[t].bytes >= static_cast<size_t>(options_.dense_below_bytes);
    }
  }
  std::vector<Bucket> buckets;
  if (options_.fusion == FusionKind::kBytes) {
    buckets = plan_buckets(sizes, options_.fusion_threshold_bytes, options_.first_bucket_bytes,
                           options_.own_bucket_bytes);
    mark_compression(buckets, compressed_, /*fused=*/true);
  } else {
    // kNone, and the cost-model planners while they profile: one bucket per tensor.
    buckets = plan_buckets(sizes, 0, 0);
    mark_compression(buckets, compressed_, /*fused=*/false);
  }
  if (!uses_cost_model(options_.fusion)) final_plan_ = true;
  planned_ = true;
  return install(std::move(buckets));
}

Status Synchronizer::install(std::vector<Bucket> buckets) {
  buckets_ = std::move(buckets);
  bucket_states_.assign(buckets_.size(), BucketState{});
  for (Bucket& bucket : buckets_) {
    BucketState& state = bucket_states_[static_cast<size_t>(bucket.index)];
    // Layout of the fusion buffer: dense slots first (one allreduce covers them), then the
    // compressed slots of a fused (sparsify-behind) bucket.
    size_t offset = 0;
    int dense_slots = 0;
    for (TensorSlot& slot : bucket.tensors) {
      if (slot.compressed) continue;
      slot.offset_bytes = offset;
      offset += slot.bytes;
      ++dense_slots;
    }
    state.dense_bytes = offset;
    state.dense_in_place = dense_slots == 1 && !bucket.compress_fused;
    size_t payload_capacity = 0;
    std::vector<const Tensor*> fused;  // compress_fused: its compressed tensors, in slot order
    for (size_t s = 0; s < bucket.tensors.size(); ++s) {
      TensorSlot& slot = bucket.tensors[s];
      Tensor& tensor = tensors_[static_cast<size_t>(slot.id)];
      tensor.bucket = bucket.index;
      tensor.slot = static_cast<int>(s);
      tensor.unit = -1;
      if (!slot.compressed) continue;
      if (bucket.compress_fused) {
        slot.offset_bytes = offset;
        offset += slot.bytes;
        fused.push_back(&tensor);
        // Where the tensor lies in the fused region, for the tensor-missing count.
        const int64_t first = static_cast<int64_t>((slot.offset_bytes - state.dense_bytes) / 4);
        state.fused_begin.push_back(first);
        state.fused_end.push_back(first + static_cast<int64_t>(slot.bytes / 4));
        continue;
      }
      FRUGAL_ASSIGN_OR_RETURN(tensor.unit, unit_for(tensor.name, tensor.shape));
      tensor.payload_offset = payload_capacity;
      tensor.payload_capacity = options_.compressor->max_compressed_bytes(tensor.unit);
      payload_capacity += tensor.payload_capacity;
    }
    if (bucket.compress_fused) {
      const size_t fused_bytes = offset - state.dense_bytes;
      // One slot alone keeps its own name and shape (and so its compressor state); a fused
      // buffer is a flat tensor named after the range it covers.
      if (fused.size() == 1) {
        FRUGAL_ASSIGN_OR_RETURN(state.fused_unit, unit_for(fused[0]->name, fused[0]->shape));
      } else {
        FRUGAL_ASSIGN_OR_RETURN(
            state.fused_unit,
            unit_for("fused[" + fused.front()->name + ".." + fused.back()->name + "]",
                     Shape{static_cast<int64_t>(fused_bytes / sizeof(float))}));
      }
      payload_capacity = options_.compressor->max_compressed_bytes(state.fused_unit);
    }
    // A lone dense slot (dense_in_place) is reduced in the gradient's own memory: no buffer.
    if (!state.dense_in_place) state.fusion_buffer.resize(offset / sizeof(float));
    state.payloads.resize(payload_capacity);
    state.payload_sizes.assign(bucket.tensors.size(), 0);
  }
  grads_.resize(tensors_.size());
  grad_is_ready_.assign(tensors_.size(), false);
  return Status::ok();
}

Status Synchronizer::replan_from_profile() {
  const size_t count = tensors_.size();
  // Medians over the profiled steps, then maxima over ranks (the slowest rank sets the pace and
  // every rank must compute the same plan from the same numbers).
  constexpr int kFields = 5;
  std::vector<double> local(count * kFields);
  for (size_t t = 0; t < count; ++t) {
    std::vector<double> ready, compress, payload, decompress, comm;
    for (size_t k = static_cast<size_t>(options_.profile_warmup_steps); k < profile_.size(); ++k) {
      const auto& step = profile_[k];
      ready.push_back(step[t].ready_us);
      compress.push_back(step[t].compress_us);
      payload.push_back(step[t].payload_bytes);
      decompress.push_back(step[t].decompress_us);
      comm.push_back(step[t].comm_us);
    }
    local[t * kFields + 0] = median(ready);
    local[t * kFields + 1] = median(compress);
    local[t * kFields + 2] = median(payload);
    local[t * kFields + 3] = median(decompress);
    local[t * kFields + 4] = -median(comm);  // the maximum of the negation: the fastest rank
  }
  FRUGAL_RETURN_IF_ERROR(
      comm_
          .allreduce(flat_view(local.data(), DType::kF64, static_cast<int64_t>(local.size())),
                     ReduceOp::kMax)
          .with_context("agreeing on the fusion cost model's profile"));
  FRUGAL_ASSIGN_OR_RETURN(link_, probe_link(comm_));

  PlanRequest request;
  request.kind = options_.fusion;
  request.world_size = comm_.size();
  request.link = link_;
  request.size_exchange = options_.compressor != nullptr && !options_.compressor->fixed_size() &&
                          options_.compressor->aggregation() == Aggregation::kGather;
  request.dense_can_ride =
      options_.compressor != nullptr && options_.compressor->aggregation() == Aggregation::kGather;
  request.tensors.resize(count);
  for (size_t t = 0; t < count; ++t) {
    TensorProfile& p = request.tensors[t];
    p.bytes = tensors_[t].bytes;
    p.ready_us = local[t * kFields + 0];
    p.compress_us = local[t * kFields + 1];
    p.payload_bytes = local[t * kFields + 2];
    p.decompress_us = local[t * kFields + 3];
    p.comm_us = -local[t * kFields + 4];
  }
  calibrate_latency(request);
  request.compressed = compressed_;
  if (options_.compressor != nullptr && options_.dense_below_bytes < 0) {
    if (options_.fusion == FusionKind::kSafusion) {
      request.compressed = choose_compressed_by_size(request.tensors, link_, comm_.size());
    } else if (options_.fusion == FusionKind::kSsfusion) {
      request.compressed = choose_compressed_per_tensor(request.tensors, link_, comm_.size());
    }
  }
  compressed_ = request.compressed;
  Plan plan = plan_by_cost_model(request);
  predicted_us_ = plan.predicted_us;
  final_plan_ = true;
  profile_.clear();
  FRUGAL_RETURN_IF_ERROR(install(std::move(plan.buckets)));
  log_plan(request);
  return Status::ok();
}

void Synchronizer::calibrate_latency(PlanRequest& request) {
  // A quiet probe between steps underestimates what a collective costs while every rank also
  // computes (on an oversubscribed host, by several times). The profiled steps exchanged each
  // tensor alone: those with small payloads cost about one latency per collective.
  constexpr double kSmallBytes = 64 * 1024;
  const int collectives = request.size_exchange ? 2 : 1;
  std::vector<double> observed;
  for (size_t t = 0; t < request.tensors.size(); ++t) {
    const TensorProfile& p = request.tensors[t];
    const double bytes = compressed_[t] ? p.payload_bytes : static_cast<double>(p.bytes);
    if (bytes < kSmallBytes && p.comm_us > 0) observed.push_back(p.comm_us / collectives);
  }
  if (!observed.empty()) {
    link_.latency_us = std::max(link_.latency_us, median(observed));
    request.link = link_;
  }
}

void Synchronizer::log_plan(const PlanRequest& request) const {
  int compressed = 0;
  for (bool c : compressed_) compressed += c ? 1 : 0;
  int riding = 0;
  for (const Bucket& bucket : buckets_) riding += bucket.dense_rides_gather ? 1 : 0;
  if (comm_.rank() == 0) {
    spdlog::info(
        "fusion {}: {} buckets for {} tensors ({} compressed; dense tensors ride in the "
        "allgather in {} of the buckets), modelled step end {:.1f} ms; link: latency {:.0f} us, "
        "allreduce {:.2f} us/KiB, allgather {:.2f} us/KiB",
        fusion_to_string({options_.fusion, options_.fusion_threshold_bytes}), buckets_.size(),
        tensors_.size(), compressed, riding, predicted_us_ * 1e-3, link_.latency_us,
        link_.allreduce_us_per_byte * 1024, link_.allgather_us_per_byte * 1024);
  }
  for (size_t t = 0; t < request.tensors.size(); ++t) {
    const TensorProfile& p = request.tensors[t];
    spdlog::debug(
        "  {}: {} B, ready at {:.0f} us, compress {:.0f} us, payload {:.0f} B, "
        "decode {:.0f} us: {}, bucket {}",
        tensors_[t].name, p.bytes, p.ready_us, p.compress_us, p.payload_bytes, p.decompress_us,
        compressed_[t] ? "compressed" : "dense", tensors_[t].bucket);
  }
}

void Synchronizer::set_next_step(int64_t step) {
  std::lock_guard lock(mutex_);
  steps_begun_ = step;
}

void Synchronizer::import_compressor_state(StateDict state) {
  std::lock_guard lock(mutex_);
  pending_compressor_state_ = std::move(state);
}

Status Synchronizer::begin_step() {
  std::lock_guard lock(mutex_);
  if (!sticky_error_.is_ok()) {
    return Status(sticky_error_.code(),
                  "Synchronizer unusable after a failed step: " + sticky_error_.message());
  }
  if (in_step_) return failed_precondition("begin_step called twice without finish_step");
  if (tensors_.empty()) return failed_precondition("begin_step: no tensor registered");
  Status planned = Status::ok();
  if (!planned_) {
    planned = plan();
  } else if (profiling() && static_cast<int>(profile_.size()) >=
                                options_.profile_warmup_steps + options_.profile_steps) {
    // Both threads are idle between steps, so this thread may use the communicator.
    planned = replan_from_profile();
  }
  if (planned.is_ok() && pending_compressor_state_ && options_.compressor != nullptr) {
    planned = options_.compressor->import_state(*pending_compressor_state_)
                  .with_context("importing the checkpoint's compressor state");
    pending_compressor_state_.reset();
  }
  if (!planned.is_ok()) {
    sticky_error_ = planned;
    return planned;
  }
  if (profiling()) profile_.emplace_back(tensors_.size());
  for (size_t b = 0; b < buckets_.size(); ++b) {
    // One part per tensor (its copy, or its compression), plus the fused compression.
    bucket_states_[b].pending =
        static_cast<int>(buckets_[b].tensors.size()) + (buckets_[b].compress_fused ? 1 : 0);
    bucket_states_[b].ready = false;
  }
  grad_is_ready_.assign(tensors_.size(), false);
  compress_queue_.clear();
  next_launch_ = 0;
  buckets_done_ = 0;
  abort_step_ = false;
  step_error_ = Status::ok();
  stats_ = StepStats{};
  stats_.step = steps_begun_++;
  step_begin_us_ = now_us();
  in_step_ = true;
  return Status::ok();
}

void Synchronizer::part_done_locked(int bucket_index) {
  BucketState& state = bucket_states_[static_cast<size_t>(bucket_index)];
  --state.pending;
  const Bucket& bucket = buckets_[static_cast<size_t>(bucket_index)];
  if (bucket.compress_fused && state.pending == 1) {
    // Every tensor is in the fusion buffer: compress the buffer as a whole.
    compress_queue_.push_back(-1 - bucket_index);
  } else if (state.pending == 0) {
    state.ready = true;
    state.ready_us = now_us();
  }
  cv_.notify_all();
}

Status Synchronizer::grad_ready(TensorId id, MutableView grad) {
  if (id < 0 || id >= num_tensors()) {
    return out_of_range("grad_ready: tensor id " + std::to_string(id) + " not in [0, " +
                        std::to_string(num_tensors()) + ")");
  }
  const Tensor& tensor = tensors_[static_cast<size_t>(id)];
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
    if (grad_is_ready_[static_cast<size_t>(id)]) {
      return failed_precondition("grad_ready('" + tensor.name + "') called twice in step " +
                                 std::to_string(stats_.step));
    }
    grad_is_ready_[static_cast<size_t>(id)] = true;
    grads_[static_cast<size_t>(id)] = grad;
    if (profiling()) {
      profile_.back()[static_cast<size_t>(id)].ready_us =
          static_cast<double>(now_us() - step_begin_us_);
    }
  }
  const Bucket& bucket = buckets_[static_cast<size_t>(tensor.bucket)];
  const TensorSlot& slot = bucket.tensors[static_cast<size_t>(tensor.slot)];
  BucketState& state = bucket_states_[static_cast<size_t>(tensor.bucket)];
  if (slot.compressed && !bucket.compress_fused) {
    // Compressed alone, by the compression thread, straight from the gradient's memory.
    std::lock_guard lock(mutex_);
    compress_queue_.push_back(id);
    cv_.notify_all();
    return Status::ok();
  }
  if (!state.dense_in_place || slot.compressed) {
    // Copied by the hook's own thread, outside the lock: slots are disjoint, and the copy then
    // overlaps the rest of backward instead of delaying the other threads.
    ScopedTraceEvent fuse(options_.timeline, phase::kFuse, kTrainingLane, tensor.name);
    std::memcpy(reinterpret_cast<std::byte*>(state.fusion_buffer.data()) + slot.offset_bytes,
                grad.data, slot.bytes);
  }
  std::lock_guard lock(mutex_);
  part_done_locked(tensor.bucket);
  return Status::ok();
}

void Synchronizer::compression_loop() {
  std::unique_lock lock(mutex_);
  while (true) {
    cv_.wait(lock, [this] {
      return stop_ || (in_step_ && !abort_step_ && step_error_.is_ok() && !compress_queue_.empty());
    });
    if (stop_) return;
    const CompressJob job = compress_queue_.front();
    compress_queue_.pop_front();
    compress_busy_ = true;
    lock.unlock();

    int64_t missing = 0;
    const int64_t start = now_us();
    Status status = run_compression(job, missing);
    const int64_t elapsed = now_us() - start;

    lock.lock();
    compress_busy_ = false;
    stats_.compress_us += elapsed;
    stats_.tensors_missing += static_cast<int>(missing);
    if (!status.is_ok()) {
      if (step_error_.is_ok()) step_error_ = status;
      cv_.notify_all();
      continue;
    }
    if (job >= 0) {
      ++stats_.tensors_compressed;
      if (profiling()) {
        const Tensor& tensor = tensors_[static_cast<size_t>(job)];
        TensorProfile& p = profile_.back()[static_cast<size_t>(job)];
        p.compress_us = static_cast<double>(elapsed);
        p.payload_bytes = static_cast<double>(bucket_states_[static_cast<size_t>(tensor.bucket)]
                                                  .payload_sizes[static_cast<size_t>(tensor.slot)]);
      }
      part_done_locked(tensors_[static_cast<size_t>(job)].bucket);
    } else {
      const int index = -1 - job;
      for (const TensorSlot& slot : buckets_[static_cast<size_t>(index)].tensors) {
        stats_.tensors_compressed += slot.compressed ? 1 : 0;
      }
      part_done_locked(index);
    }
  }
}

Status Synchronizer::run_compression(CompressJob job, int64_t& missing) {
  Compressor& compressor = *options_.compressor;
  if (job >= 0) {
    const Tensor& tensor = tensors_[static_cast<size_t>(job)];
    BucketState& state = bucket_states_[static_cast<size_t>(tensor.bucket)];
    ScopedTraceEvent event(options_.timeline, phase::kCompress, kCompressLane, tensor.name);
    // grads_[job] was written under the lock before the job was queued.
    const MutableView grad = grads_[static_cast<size_t>(job)];
    FRUGAL_ASSIGN_OR_RETURN(
        const size_t size,
        compressor.compress(
            tensor.unit, as_const(grad),
            MutableBytes(state.payloads.data() + tensor.payload_offset, tensor.payload_capacity),
            step_info()));
    state.payload_sizes[static_cast<size_t>(tensor.slot)] = size;
    const int64_t begin[] = {0};
    const int64_t end[] = {grad.numel()};
    FRUGAL_ASSIGN_OR_RETURN(
        const int empty,
        count_missing_tensors(ConstBytes(state.payloads.data() + tensor.payload_offset, size),
                              compressor.sparse_value_dtype(), grad.numel(), begin, end));
    missing = empty;
    return Status::ok();
  }
  const int index = -1 - job;
  const Bucket& bucket = buckets_[static_cast<size_t>(index)];
  BucketState& state = bucket_states_[static_cast<size_t>(index)];
  ScopedTraceEvent event(options_.timeline, phase::kCompress, kCompressLane,
                         "fused " + bucket_detail(bucket));
  const int64_t fused_numel = static_cast<int64_t>(state.fusion_buffer.size()) -
                              static_cast<int64_t>(state.dense_bytes / 4);
  const float* fused = state.fusion_buffer.data() + state.dense_bytes / sizeof(float);
  ConstView view{fused, DType::kF32, compressor.tensor(state.fused_unit).shape};
  FRUGAL_ASSIGN_OR_RETURN(const size_t size,
                          compressor.compress(state.fused_unit, view, state.payloads, step_info()));
  state.payload_sizes[0] = size;
  FRUGAL_ASSIGN_OR_RETURN(const int empty,
                          count_missing_tensors(ConstBytes(state.payloads.data(), size),
                                                compressor.sparse_value_dtype(), fused_numel,
                                                state.fused_begin, state.fused_end));
  missing = empty;
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
                       bucket_states_[static_cast<size_t>(next_launch_)].ready);
    });
    if (stop_) return;
    const int index = next_launch_++;
    const int64_t ready_us = bucket_states_[static_cast<size_t>(index)].ready_us;
    comm_busy_ = true;
    lock.unlock();

    if (options_.timeline && options_.timeline->enabled()) {
      options_.timeline->record(phase::kQueue, ready_us, now_us() - ready_us, kCommLane,
                                bucket_detail(buckets_[static_cast<size_t>(index)]));
    }
    ExchangeCounters counters;
    Status status = run_bucket(index, counters);

    lock.lock();
    comm_busy_ = false;
    stats_.bytes_sent += counters.bytes_sent;
    stats_.bytes_received += counters.bytes_received;
    stats_.decompress_us += counters.decompress_us;
    stats_.comm_us += counters.comm_us;
    if (status.is_ok()) {
      const Bucket& bucket = buckets_[static_cast<size_t>(index)];
      ++buckets_done_;
      ++stats_.num_buckets;
      stats_.dense_bytes += static_cast<int64_t>(bucket.bytes);
      if (profiling() && bucket.tensors.size() == 1) {
        // One tensor per bucket while profiling: its decoding time per rank's payload.
        TensorProfile& p = profile_.back()[static_cast<size_t>(bucket.tensors.front().id)];
        p.decompress_us = static_cast<double>(counters.decompress_us) / comm_.size();
        p.comm_us = static_cast<double>(counters.comm_us);
      }
    } else if (step_error_.is_ok()) {
      step_error_ = status;
    }
    cv_.notify_all();
  }
}

Status Synchronizer::run_bucket(int index, ExchangeCounters& counters) {
  const Bucket& bucket = buckets_[static_cast<size_t>(index)];
  BucketState& state = bucket_states_[static_cast<size_t>(index)];
  const float divisor = options_.average ? static_cast<float>(comm_.size()) : 1.0f;
  ScopedTraceEvent comm_event(options_.timeline, phase::kComm, kCommLane, bucket_detail(bucket));

  // Compressed part: the payloads (already made by the compression thread) are exchanged and
  // decoded straight into the gradients (alone) or into the fused region (sparsify-behind).
  std::vector<CompressedUnit> units;
  if (bucket.compress_fused) {
    units.push_back(
        {state.fused_unit, ConstBytes(state.payloads.data(), state.payload_sizes[0]),
         MutableView{state.fusion_buffer.data() + state.dense_bytes / sizeof(float), DType::kF32,
                     options_.compressor->tensor(state.fused_unit).shape}});
  } else {
    for (size_t s = 0; s < bucket.tensors.size(); ++s) {
      const TensorSlot& slot = bucket.tensors[s];
      if (!slot.compressed) continue;
      const Tensor& tensor = tensors_[static_cast<size_t>(slot.id)];
      units.push_back(
          {tensor.unit,
           ConstBytes(state.payloads.data() + tensor.payload_offset, state.payload_sizes[s]),
           grads_[static_cast<size_t>(slot.id)]});
    }
  }

  // Dense part: the dense slots (in the gradient itself when it is alone), by an allreduce of
  // their own or inside the gather of the payloads (Bucket::dense_rides_gather).
  // grads_ entries of this bucket were written under the lock before the bucket became ready.
  MutableView dense;
  if (state.dense_bytes > 0) {
    void* data = state.fusion_buffer.data();
    if (state.dense_in_place) {
      for (const TensorSlot& slot : bucket.tensors) {
        if (!slot.compressed) data = grads_[static_cast<size_t>(slot.id)].data;
      }
    }
    dense = flat_view(data, DType::kF32, static_cast<int64_t>(state.dense_bytes / sizeof(float)));
  }
  const bool riding = bucket.dense_rides_gather && dense.data != nullptr && !units.empty();
  if (dense.data != nullptr && !riding) {
    const int64_t start = now_us();
    Status status = comm_.allreduce(dense, ReduceOp::kSum);
    counters.comm_us += now_us() - start;
    if (!status.is_ok()) {
      return status.with_context("allreduce of " + bucket_detail(bucket) + " on rank " +
                                 std::to_string(comm_.rank()));
    }
    const int64_t wire =
        ring_allreduce_bytes_per_rank(static_cast<int64_t>(state.dense_bytes), comm_.size());
    counters.bytes_sent += wire;
    counters.bytes_received += wire;
  }
  if (!units.empty()) {
    FRUGAL_RETURN_IF_ERROR(compressed_exchange_->exchange(units, step_info(), counters, divisor,
                                                          riding ? dense : MutableView{}));
  }

  ScopedTraceEvent unpack(state.fusion_buffer.empty() ? nullptr : options_.timeline, phase::kFuse,
                          kCommLane, "unpack " + bucket_detail(bucket));
  // The exchange averaged what it carried (compressed units and riding dense values); an
  // allreduced dense part is a sum still. Division (not multiplication by 1/n, unless n is a
  // power of two) gives the correctly rounded average, the same on every rank.
  for (const TensorSlot& slot : bucket.tensors) {
    float* target = static_cast<float*>(grads_[static_cast<size_t>(slot.id)].data);
    const size_t count = slot.bytes / sizeof(float);
    const bool averaged = slot.compressed || riding;
    const bool in_gradient =
        (slot.compressed && !bucket.compress_fused) || (!slot.compressed && state.dense_in_place);
    if (!in_gradient) {
      std::memcpy(target, state.fusion_buffer.data() + slot.offset_bytes / sizeof(float),
                  slot.bytes);
    }
    if (!averaged) divide_floats(target, count, divisor);
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
    // Buckets holding these tensors can never be sent; stop launching and only wait for work in
    // flight, which writes into gradient memory the caller is about to reuse.
    abort_step_ = true;
    cv_.notify_all();
  }
  const auto finished = [this] {
    return buckets_done_ == static_cast<int>(buckets_.size()) ||
           ((abort_step_ || !step_error_.is_ok()) && !comm_busy_ && !compress_busy_);
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
    for (; delivered < done; ++delivered) on_bucket_done(buckets_[static_cast<size_t>(delivered)]);
    callback_us += now_us() - callback_start;
    lock.lock();
  }
  stats_.wait_us = now_us() - start_us - callback_us;
  stats_.dense_wire_bytes = ring_allreduce_bytes_per_rank(stats_.dense_bytes, comm_.size());
  if (options_.compressor != nullptr) {
    stats_.residual_bytes = options_.compressor->stats().residual_bytes;
  }
  if (options_.timeline && options_.timeline->enabled()) {
    options_.timeline->record(phase::kWait, start_us, stats_.wait_us, kTrainingLane,
                              "step " + std::to_string(stats_.step));
  }
  in_step_ = false;
  compress_queue_.clear();
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
