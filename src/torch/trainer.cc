#include "torch/trainer.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <mutex>

#include "compress/registry.h"
#include "core/clock.h"
#include "torch/models.h"
#include "torch/optimizer.h"
#include "torch/sampler.h"
#include "torch/training_data.h"

namespace frugal {
namespace {

namespace F = torch::nn::functional;

// LibTorch's default generator is process-wide; ranks that are threads of one process (the
// local backend) must not interleave seeding and initialization.
std::mutex& model_init_mutex() {
  static std::mutex mutex;
  return mutex;
}

// LibTorch reports errors by exception; the Trainer's API returns Status, so every entry point
// that runs LibTorch code is wrapped here (the exception policy in core/status.h).
template <typename Body>
Status guarded(const char* what, Body&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    return internal_error(std::string(what) + " failed: " + e.what());
  }
}

MutableView view_of(torch::Tensor& t) {
  return {t.data_ptr(), DType::kF32, Shape(t.sizes().begin(), t.sizes().end())};
}

// Copies rank 0's values of `tensors` (contiguous, any dtype) to every rank with one broadcast.
Status broadcast_from_rank0(Communicator& comm, const std::vector<torch::Tensor>& tensors) {
  size_t total = 0;
  for (const auto& t : tensors) total += t.nbytes();
  if (total == 0 || comm.size() == 1) return Status::ok();
  std::vector<std::byte> flat(total);
  size_t offset = 0;
  for (const auto& t : tensors) {
    std::memcpy(flat.data() + offset, t.data_ptr(), t.nbytes());
    offset += t.nbytes();
  }
  FRUGAL_RETURN_IF_ERROR(comm.broadcast(bytes_of(flat), 0));
  offset = 0;
  for (const auto& t : tensors) {
    std::memcpy(t.data_ptr(), flat.data() + offset, t.nbytes());
    offset += t.nbytes();
  }
  return Status::ok();
}

Status validate(const TrainerOptions& o) {
  if (o.batch_size <= 0) return invalid_argument("--batch-size must be > 0");
  if (o.eval_batch_size <= 0) return invalid_argument("--eval-batch-size must be > 0");
  if (o.steps < 0) return invalid_argument("--steps must be >= 0 (0: train --epochs epochs)");
  if (o.steps == 0 && o.epochs <= 0) return invalid_argument("--epochs must be > 0");
  if (o.threads < 0) return invalid_argument("--threads must be >= 0");
  if (o.check_replicas_every < 0) return invalid_argument("--check-replicas must be >= 0");
  if (o.timing_warmup_steps < 0) return invalid_argument("timing warm-up steps must be >= 0");
  return validate(o.schedule);
}

Result<ModelTask> model_task(const std::string& name) {
  std::string valid;
  for (const auto& info : model_catalog()) {
    if (info.name == name) return info.task;
    valid += (valid.empty() ? "" : ", ") + info.name;
  }
  return invalid_argument("unknown model '" + name + "'; valid: " + valid);
}

}  // namespace

struct Trainer::Impl {
  Impl(Communicator& c, TrainerOptions o, Timeline* t)
      : comm(c), options(std::move(o)), timeline(t) {}

  Status init();
  Status step(StepReport* report);
  Result<EvalResult> evaluate();
  Status check_replicas();
  // Called by autograd once parameter `index`'s gradient is accumulated.
  void on_grad_ready(size_t index);

  Communicator& comm;
  const TrainerOptions options;
  Timeline* const timeline;

  std::shared_ptr<const TrainingData> data;
  std::shared_ptr<Model> model;
  std::vector<torch::Tensor> params;  // in the model's order
  std::vector<std::string> param_names;
  std::vector<torch::Tensor> buffers;
  std::vector<TensorId> sync_ids;  // by parameter index
  // One optimizer per parameter, stepped as soon as its bucket's gradients are averaged, so the
  // update of early buckets overlaps the communication of later ones; per parameter rather than
  // per bucket because cost-model planners change the buckets after profiling, and optimizer
  // state must not depend on the bucketing.
  std::vector<std::unique_ptr<torch::optim::Optimizer>> param_optimizers;
  std::vector<size_t> param_of_tensor;     // Synchronizer TensorId -> parameter index
  std::unique_ptr<Compressor> compressor;  // before sync: destroyed after it
  std::unique_ptr<Synchronizer> sync;
  // The AccumulateGrad nodes carrying our hooks: a parameter only holds a weak reference, so
  // they are kept alive here (as DDP's reducer keeps them).
  std::vector<std::shared_ptr<torch::autograd::Node>> grad_accumulators;
  Status hook_error;  // first failure inside a hook this step (hooks cannot return one)

  ShardOptions shard;
  std::vector<int64_t> epoch_indices;
  int64_t indices_epoch = -1;
  int64_t steps_per_epoch = 0, total_steps = 0, step_count = 0;

  // Running totals.
  double train_seconds = 0, timed_seconds = 0;
  int64_t samples = 0, timed_samples = 0;
  double epoch_loss_sum = 0;
  int64_t epoch_batches = 0;
  StepStatsSum sync_sums;
};

namespace {

// Runs `callback` after an AccumulateGrad node has stored its parameter's gradient.
class GradReadyHook final : public torch::autograd::FunctionPostHook {
 public:
  explicit GradReadyHook(std::function<void()> callback) : callback_(std::move(callback)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    callback_();
    return outputs;
  }

 private:
  std::function<void()> callback_;
};

}  // namespace

Status Trainer::Impl::init() {
  FRUGAL_RETURN_IF_ERROR(validate(options));
  if (options.threads > 0) torch::set_num_threads(options.threads);
  FRUGAL_ASSIGN_OR_RETURN(ModelTask task, model_task(options.model));
  DataOptions data_options = options.data;
  data_options.seed = options.seed;
  FRUGAL_ASSIGN_OR_RETURN(data, load_training_data(data_options, task));

  ModelOptions model_options;
  model_options.vocab_size = data->vocab_size();
  model_options.max_seq_len = std::max<int64_t>(model_options.max_seq_len, options.data.seq_len);
  {
    std::lock_guard lock(model_init_mutex());
    torch::manual_seed(options.seed);
    FRUGAL_ASSIGN_OR_RETURN(model, make_model(options.model, model_options));
  }
  for (const auto& item : model->named_parameters()) {
    param_names.push_back(item.key());
    params.push_back(item.value());
  }
  buffers = model->buffers();
  std::vector<torch::Tensor> initial_state = params;
  initial_state.insert(initial_state.end(), buffers.begin(), buffers.end());
  {
    torch::NoGradGuard no_grad;
    FRUGAL_RETURN_IF_ERROR(broadcast_from_rank0(comm, initial_state));
  }
  for (const torch::Tensor& param : params) {
    FRUGAL_ASSIGN_OR_RETURN(auto optimizer, make_optimizer(options.optimizer, {param}));
    param_optimizers.push_back(std::move(optimizer));
  }

  shard =
      ShardOptions{data->size(Split::kTrain), comm.rank(), comm.size(), options.seed, true, true};
  const int64_t per_rank = shard_size(shard);
  if (per_rank == 0) {
    return invalid_argument("the training split has " + std::to_string(shard.dataset_size) +
                            " samples: too few for " + std::to_string(comm.size()) + " workers");
  }
  steps_per_epoch = (per_rank + options.batch_size - 1) / options.batch_size;
  total_steps = options.steps > 0 ? options.steps : options.epochs * steps_per_epoch;

  // One worker sends nothing, so compressing would only lose information.
  if (!options.compress.empty() && options.compress != "none" && comm.size() > 1) {
    CompressorContext context;
    context.world_size = comm.size();
    context.seed = options.seed;
    auto made = make_compressor(options.compress, context);
    if (!made.is_ok()) return made.status().with_context("--compress");
    compressor = std::move(made).value();
  }
  SynchronizerOptions sync_options;
  sync_options.fusion = options.fusion;
  sync_options.fusion_threshold_bytes = options.fusion_threshold_bytes;
  sync_options.first_bucket_bytes = options.first_bucket_bytes;
  sync_options.own_bucket_bytes = options.own_bucket_bytes;
  sync_options.compressor = compressor.get();
  sync_options.dense_below_bytes = options.dense_below_bytes;
  sync_options.total_steps = total_steps;
  sync_options.timeline = timeline;
  sync = std::make_unique<Synchronizer>(comm, sync_options);
  // Backward produces gradients roughly in reverse registration order (last layer first), so
  // the reverse of the model's order is the bucket order (DDP's heuristic too).
  sync_ids.resize(params.size());
  param_of_tensor.resize(params.size());
  for (size_t i = params.size(); i-- > 0;) {
    FRUGAL_ASSIGN_OR_RETURN(sync_ids[i],
                            sync->register_tensor(param_names[i], Shape(params[i].sizes().begin(),
                                                                        params[i].sizes().end())));
    param_of_tensor[static_cast<size_t>(sync_ids[i])] = i;
  }
  for (size_t i = 0; i < params.size(); ++i) {
    auto accumulator = torch::autograd::impl::grad_accumulator(params[i]);
    accumulator->add_post_hook(std::make_unique<GradReadyHook>([this, i] { on_grad_ready(i); }));
    grad_accumulators.push_back(std::move(accumulator));
  }

  model->train();
  return Status::ok();
}

void Trainer::Impl::on_grad_ready(size_t index) {
  if (!hook_error.is_ok() || !options.sync) return;
  torch::Tensor& grad = params[index].mutable_grad();
  // AccumulateGrad keeps a fresh gradient in the parameter's (contiguous) layout; the check
  // guards the engine's view against anything else.
  if (!grad.is_contiguous() || grad.scalar_type() != torch::kFloat32) {
    grad = grad.to(torch::kFloat32).contiguous();
  }
  hook_error = sync->grad_ready(sync_ids[index], view_of(grad));
}

Status Trainer::Impl::step(StepReport* report) {
  if (step_count >= total_steps) {
    return failed_precondition("all " + std::to_string(total_steps) + " steps are done");
  }
  const int64_t start_us = now_us();
  const int64_t epoch = step_count / steps_per_epoch;
  const int64_t index_in_epoch = step_count % steps_per_epoch;
  if (epoch != indices_epoch) {
    epoch_indices = shard_indices(shard, epoch);
    indices_epoch = epoch;
    epoch_loss_sum = 0;
    epoch_batches = 0;
  }
  const int64_t begin = index_in_epoch * options.batch_size;
  const int64_t count =
      std::min<int64_t>(options.batch_size, static_cast<int64_t>(epoch_indices.size()) - begin);
  const Batch batch = data->batch(
      Split::kTrain, std::span<const int64_t>(epoch_indices)
                         .subspan(static_cast<size_t>(begin), static_cast<size_t>(count)));
  for (auto& p : params) p.mutable_grad().reset();  // autograd then stores fresh gradients

  if (options.sync) FRUGAL_RETURN_IF_ERROR(sync->begin_step());
  const double lr =
      learning_rate_at(options.schedule, options.optimizer.lr, step_count, total_steps);
  for (auto& optimizer : param_optimizers) set_learning_rate(*optimizer, lr);
  hook_error = Status::ok();
  torch::Tensor loss;
  {
    ScopedTraceEvent event(timeline, phase::kForward);
    torch::Tensor logits = model->forward(batch.input);
    loss = F::cross_entropy(logits.reshape({-1, logits.size(-1)}), batch.target.reshape({-1}));
  }
  {
    ScopedTraceEvent event(timeline, phase::kBackward);
    loss.backward();
  }
  Status optimizer_error;
  const auto step_params = [&](const Bucket& bucket) {
    if (!optimizer_error.is_ok()) return;
    ScopedTraceEvent event(timeline, phase::kOptimizer);
    // The Synchronizer is not exception-safe; LibTorch errors stop here.
    optimizer_error = guarded("the optimizer step", [&] {
      for (const TensorSlot& slot : bucket.tensors) {
        param_optimizers[param_of_tensor[static_cast<size_t>(slot.id)]]->step();
      }
      return Status::ok();
    });
  };
  Status synced = Status::ok();
  if (options.sync) {
    synced = sync->finish_step(step_params);
  } else {
    Bucket all;  // no synchronization: every parameter steps on its own gradient
    for (size_t id = 0; id < params.size(); ++id)
      all.tensors.push_back({static_cast<TensorId>(id)});
    step_params(all);
  }
  FRUGAL_RETURN_IF_ERROR(hook_error);
  FRUGAL_RETURN_IF_ERROR(synced);
  FRUGAL_RETURN_IF_ERROR(optimizer_error);

  const double loss_value = loss.item<double>();
  const double seconds = static_cast<double>(now_us() - start_us) * 1e-6;
  const int64_t global_samples = count * comm.size();
  const int64_t warmup =
      total_steps > 2 * options.timing_warmup_steps ? options.timing_warmup_steps : 0;
  train_seconds += seconds;
  samples += global_samples;
  if (step_count >= warmup) {
    timed_seconds += seconds;
    timed_samples += global_samples;
  }
  epoch_loss_sum += loss_value;
  ++epoch_batches;
  const StepStats stats = options.sync ? sync->last_step_stats() : StepStats{};
  sync_sums.add(stats);
  ++step_count;

  if (report != nullptr) {
    report->step = step_count;
    report->total_steps = total_steps;
    report->epoch = epoch;
    report->loss = loss_value;
    report->lr = lr;
    report->step_seconds = seconds;
    report->train_seconds = train_seconds;
    report->samples = samples;
    report->sync = stats;
  }
  return Status::ok();
}

Result<EvalResult> Trainer::Impl::evaluate() {
  torch::NoGradGuard no_grad;
  FRUGAL_RETURN_IF_ERROR(broadcast_from_rank0(comm, buffers));
  ScopedTraceEvent event(timeline, phase::kEval);
  model->eval();
  const ShardOptions eval_shard{
      data->size(Split::kTest), comm.rank(), comm.size(), 0, false, false};
  const std::vector<int64_t> indices = shard_indices(eval_shard, 0);
  // Sums over this rank's shard: loss, correct predictions, predictions.
  std::vector<double> sums(3, 0.0);
  for (size_t begin = 0; begin < indices.size();
       begin += static_cast<size_t>(options.eval_batch_size)) {
    const size_t count =
        std::min(indices.size() - begin, static_cast<size_t>(options.eval_batch_size));
    const Batch batch = data->batch(Split::kTest, std::span(indices).subspan(begin, count));
    torch::Tensor logits = model->forward(batch.input);
    logits = logits.reshape({-1, logits.size(-1)});
    const torch::Tensor target = batch.target.reshape({-1});
    sums[0] += F::cross_entropy(logits, target, F::CrossEntropyFuncOptions().reduction(torch::kSum))
                   .item<double>();
    sums[1] += logits.argmax(1).eq(target).sum().item<double>();
    sums[2] += static_cast<double>(target.size(0));
  }
  model->train();
  FRUGAL_RETURN_IF_ERROR(comm.allreduce({sums.data(), DType::kF64, {3}}, ReduceOp::kSum));
  EvalResult result;
  result.samples = data->size(Split::kTest);
  result.loss = sums[0] / std::max(sums[2], 1.0);
  if (data->task() == ModelTask::kImageClassification) {
    result.accuracy = sums[1] / std::max(sums[2], 1.0);
  } else {
    result.perplexity = std::exp(result.loss);
  }
  return result;
}

Status Trainer::Impl::check_replicas() {
  std::vector<uint64_t> hashes;
  hashes.reserve(params.size());
  for (const auto& p : params) hashes.push_back(XXH3_64bits(p.data_ptr(), p.nbytes()));
  std::vector<uint64_t> all(hashes.size() * static_cast<size_t>(comm.size()));
  FRUGAL_RETURN_IF_ERROR(comm.allgather(bytes_of(std::as_const(hashes)), bytes_of(all)));
  for (size_t i = 0; i < params.size(); ++i) {
    std::string differing;
    for (int r = 1; r < comm.size(); ++r) {
      if (all[static_cast<size_t>(r) * params.size() + i] != all[i]) {
        differing += (differing.empty() ? "" : ", ") + std::to_string(r);
      }
    }
    if (!differing.empty()) {
      return internal_error("replicas diverged after step " + std::to_string(step_count) +
                            ": parameter '" + param_names[i] + "' on rank(s) " + differing +
                            " differs from rank 0");
    }
  }
  return Status::ok();
}

Trainer::Trainer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Trainer::~Trainer() = default;

Result<std::unique_ptr<Trainer>> Trainer::create(Communicator& comm, TrainerOptions options,
                                                 Timeline* timeline) {
  auto impl = std::make_unique<Impl>(comm, std::move(options), timeline);
  FRUGAL_RETURN_IF_ERROR(guarded("setting up training", [&] { return impl->init(); }));
  return std::unique_ptr<Trainer>(new Trainer(std::move(impl)));
}

Status Trainer::train_step(StepReport* report) {
  return guarded("a training step", [&] { return impl_->step(report); });
}

Result<EvalResult> Trainer::evaluate() {
  EvalResult result;
  FRUGAL_RETURN_IF_ERROR(guarded("evaluation", [&]() -> Status {
    FRUGAL_ASSIGN_OR_RETURN(result, impl_->evaluate());
    return Status::ok();
  }));
  return result;
}

Status Trainer::check_replicas() { return impl_->check_replicas(); }

Result<TrainSummary> Trainer::run(TrainObserver* observer) {
  Impl& m = *impl_;
  TrainSummary summary;
  while (m.step_count < m.total_steps) {
    StepReport report;
    FRUGAL_RETURN_IF_ERROR(train_step(&report));
    if (observer != nullptr) observer->on_step(report);
    if (m.options.check_replicas_every > 0 && m.step_count % m.options.check_replicas_every == 0) {
      FRUGAL_RETURN_IF_ERROR(check_replicas());
    }
    if (m.step_count % m.steps_per_epoch != 0 && m.step_count != m.total_steps) continue;
    EpochReport epoch;
    epoch.epoch = report.epoch;
    epoch.step = m.step_count;
    epoch.train_seconds = m.train_seconds;
    std::vector<double> loss{m.epoch_loss_sum, static_cast<double>(m.epoch_batches)};
    FRUGAL_RETURN_IF_ERROR(m.comm.allreduce({loss.data(), DType::kF64, {2}}, ReduceOp::kSum));
    epoch.train_loss = loss[0] / std::max(loss[1], 1.0);
    if (m.options.evaluate) {
      FRUGAL_ASSIGN_OR_RETURN(epoch.eval, evaluate());
    }
    if (observer != nullptr) observer->on_epoch(epoch);
    summary.final_train_loss = epoch.train_loss;
    summary.eval = epoch.eval;
  }
  const double steps = std::max<double>(static_cast<double>(m.step_count), 1.0);
  summary.steps = m.step_count;
  summary.samples = m.samples;
  summary.train_seconds = m.train_seconds;
  summary.samples_per_s =
      m.timed_seconds > 0 ? static_cast<double>(m.timed_samples) / m.timed_seconds : 0.0;
  const StepStatsSum& sums = m.sync_sums;
  summary.bytes_sent_per_step = sums.bytes_sent / steps;
  summary.bytes_received_per_step = sums.bytes_received / steps;
  summary.dense_bytes_per_step = sums.dense_bytes / steps;
  summary.dense_wire_bytes_per_step = sums.dense_wire_bytes / steps;
  summary.comm_ms_per_step = sums.comm_us / steps * 1e-3;
  summary.wait_ms_per_step = sums.wait_us / steps * 1e-3;
  summary.compress_ms_per_step = sums.compress_us / steps * 1e-3;
  summary.decompress_ms_per_step = sums.decompress_us / steps * 1e-3;
  summary.tensor_missing_rate =
      sums.tensors_compressed > 0 ? sums.tensors_missing / sums.tensors_compressed : 0.0;
  summary.residual_bytes = m.compressor ? m.compressor->stats().residual_bytes : 0;
  summary.num_buckets = static_cast<int>(m.sync->buckets().size());
  summary.compressor = m.compressor ? m.compressor->spec() : "none";
  return summary;
}

const TrainerOptions& Trainer::options() const { return impl_->options; }
int64_t Trainer::steps_per_epoch() const { return impl_->steps_per_epoch; }
int64_t Trainer::total_steps() const { return impl_->total_steps; }
int64_t Trainer::num_epochs() const {
  return (impl_->total_steps + impl_->steps_per_epoch - 1) / impl_->steps_per_epoch;
}
int64_t Trainer::steps_done() const { return impl_->step_count; }
int64_t Trainer::parameter_count() const { return frugal::parameter_count(*impl_->model); }
std::string Trainer::data_description() const { return impl_->data->description(); }
const Synchronizer& Trainer::synchronizer() const { return *impl_->sync; }
Model& Trainer::model() { return *impl_->model; }

}  // namespace frugal
