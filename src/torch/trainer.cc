#include "torch/trainer.h"

#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <mutex>

#include "ckpt/checkpointer.h"
#include "ckpt/files.h"
#include "ckpt/restore.h"
#include "compress/registry.h"
#include "core/clock.h"
#include "core/stats.h"
#include "torch/models.h"
#include "torch/optimizer.h"
#include "torch/sampler.h"
#include "torch/training_data.h"
#include "torch/training_state.h"

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
  Status setup_checkpoints();
  Status refuse_foreign_checkpoints();
  Status resume();
  Status apply_cursor(const ckpt::RestoredState& restored);
  // After each step: saves when one is due (always after the last step) and, at the end, waits
  // for it to be committed.
  Status maybe_save();
  Status save_checkpoint();
  nlohmann::json config_json() const;

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
  double resumed_train_seconds = 0;  // train_seconds restored from a checkpoint
  int64_t samples = 0, timed_samples = 0;
  double epoch_loss_sum = 0;
  int64_t epoch_batches = 0;
  StepStatsSum sync_sums;

  // Checkpoints (null when off).
  std::unique_ptr<TrainingState> state;
  std::unique_ptr<ckpt::Checkpointer> checkpointer;
  int64_t start_step = 0;            // the step this process started at (resumed or 0)
  int64_t resumed_from = -1;         // the restored checkpoint's step
  int64_t steps_per_save = 0;        // agreed by every rank
  int64_t next_save_step = 0;        // the next step at which to save (or calibrate)
  bool interval_calibrated = false;  // --checkpoint-interval: steps_per_save measured
  int64_t last_saved_step = -1;
  std::array<double, 2> epoch_loss_state{};  // per-rank cursor: the open epoch's loss sums
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
  return setup_checkpoints();
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

namespace {

// Steps after the start before --checkpoint-interval is first converted into steps.
constexpr int64_t kIntervalCalibrationSteps = 3;

Result<int64_t> meta_int(const nlohmann::json& meta, const char* key) {
  const auto it = meta.find(key);
  if (it == meta.end() || !it->is_number_integer()) {
    return data_loss(std::string("checkpoint meta lacks the integer '") + key + "'");
  }
  return it->get<int64_t>();
}

}  // namespace

nlohmann::json Trainer::Impl::config_json() const {
  return {{"model", options.model},
          {"optimizer", options.optimizer.name},
          {"lr", options.optimizer.lr},
          {"compress", compressor ? compressor->spec() : "none"},
          {"fusion", fusion_to_string({options.fusion, options.fusion_threshold_bytes})},
          {"batch_size", options.batch_size},
          {"world_size", comm.size()},
          {"seed", options.seed},
          {"data", data->description()},
          {"total_steps", total_steps}};
}

Status Trainer::Impl::setup_checkpoints() {
  const CheckpointSettings& c = options.checkpoint;
  if (c.dir.empty()) {
    if (c.resume || c.every_steps > 0 || c.interval_seconds > 0) {
      return invalid_argument(
          "--resume, --checkpoint-every and --checkpoint-interval need --checkpoint-dir");
    }
    return Status::ok();
  }
  if (c.every_steps < 0) return invalid_argument("--checkpoint-every must be >= 0");
  if (c.interval_seconds < 0) return invalid_argument("--checkpoint-interval must be >= 0");
  if (c.every_steps > 0 && c.interval_seconds > 0) {
    return invalid_argument("give --checkpoint-every or --checkpoint-interval, not both");
  }
  if (c.mode != "lazy" && c.mode != "async" && c.mode != "sync") {
    return invalid_argument("--checkpoint-mode '" + c.mode +
                            "' is invalid; valid: lazy, async, sync");
  }
  FRUGAL_RETURN_IF_ERROR(refuse_foreign_checkpoints());
  std::vector<std::pair<std::string, torch::Tensor>> named_buffers;
  for (const auto& item : model->named_buffers()) {
    named_buffers.emplace_back(item.key(), item.value());
  }
  state = std::make_unique<TrainingState>(param_names, params, named_buffers, param_optimizers,
                                          options.optimizer, compressor.get(), sync.get());
  // One run id for the job, so its temporary directories never mix with another run's.
  std::string run_id =
      comm.rank() == 0 ? ckpt::make_run_id() : std::string(ckpt::kMaxRunIdLength, ' ');
  FRUGAL_RETURN_IF_ERROR(
      comm.broadcast(MutableBytes(reinterpret_cast<std::byte*>(run_id.data()), run_id.size()), 0));
  ckpt::CheckpointerOptions co;
  co.dir = c.dir;
  co.run_id = run_id;
  co.keep = c.keep;
  co.chunk_bytes = c.chunk_bytes;
  co.async = c.mode != "sync";
  co.lazy = c.mode == "lazy";
  co.commit_timeout_seconds = c.commit_timeout_seconds;
  FRUGAL_ASSIGN_OR_RETURN(co.fault, ckpt::parse_fault_plan(c.fault, c.fault_hang_seconds));
  co.meta = {{"config", config_json()}};
  auto made = ckpt::Checkpointer::create(comm.rank(), comm.size(), std::move(co), timeline);
  if (!made.is_ok()) return made.status().with_context("--checkpoint-dir " + c.dir);
  checkpointer = std::move(made).value();
  if (c.resume) FRUGAL_RETURN_IF_ERROR(resume());
  checkpointer->prepare(state->sources());
  start_step = step_count;
  if (c.every_steps > 0) {
    steps_per_save = c.every_steps;
    next_save_step = (step_count / steps_per_save + 1) * steps_per_save;
  } else {
    next_save_step = step_count + kIntervalCalibrationSteps;  // first, measure the step time
  }
  return Status::ok();
}

// Without --resume, a directory that already holds checkpoints belongs to another run: saving
// into it would mix the runs and collect that run's checkpoints as old ones. Rank 0 looks (the
// directory may be local to its host) and every rank gets its answer.
Status Trainer::Impl::refuse_foreign_checkpoints() {
  if (options.checkpoint.resume) return Status::ok();
  std::vector<int64_t> newest{-1};
  if (comm.rank() == 0) {
    auto listed = ckpt::list_directory(options.checkpoint.dir);
    for (const std::string& name : listed.is_ok() ? listed.value() : std::vector<std::string>{}) {
      newest[0] = std::max(newest[0], ckpt::parse_step_dir_name(name).value_or(-1));
    }
  }
  FRUGAL_RETURN_IF_ERROR(comm.broadcast(bytes_of(newest), 0));
  if (newest[0] < 0) return Status::ok();
  return failed_precondition("--checkpoint-dir " + options.checkpoint.dir +
                             " holds checkpoints of another run (newest: step " +
                             std::to_string(newest[0]) +
                             "); pass --resume to continue it, or choose another directory");
}

Status Trainer::Impl::resume() {
  FRUGAL_ASSIGN_OR_RETURN(auto restored, ckpt::restore_latest(comm, options.checkpoint.dir));
  if (!restored) {
    if (comm.rank() == 0) {
      spdlog::info("no checkpoint in {}: training starts at step 0", options.checkpoint.dir);
    }
    return Status::ok();
  }
  {
    torch::NoGradGuard no_grad;
    FRUGAL_RETURN_IF_ERROR(state->apply(*restored));
  }
  FRUGAL_RETURN_IF_ERROR(apply_cursor(*restored));
  sync->set_next_step(step_count);
  resumed_from = restored->manifest.step;
  if (comm.rank() == 0) {
    spdlog::info("resumed from {} (step {} of {}, saved on {} ranks) in {:.2f} s", restored->path,
                 step_count, total_steps, restored->manifest.world_size, restored->seconds);
  }
  return Status::ok();
}

// Where the data stream goes on: the same step when the global batch is unchanged; otherwise
// the batch of the new layout that holds the saved position, rounded down (a few samples of the
// open epoch are seen twice rather than skipped).
Status Trainer::Impl::apply_cursor(const ckpt::RestoredState& restored) {
  const nlohmann::json& meta = restored.manifest.meta;
  FRUGAL_ASSIGN_OR_RETURN(const int64_t step, meta_int(meta, "step"));
  FRUGAL_ASSIGN_OR_RETURN(const int64_t saved_spe, meta_int(meta, "steps_per_epoch"));
  FRUGAL_ASSIGN_OR_RETURN(const int64_t saved_world, meta_int(meta, "world_size"));
  FRUGAL_ASSIGN_OR_RETURN(const int64_t saved_batch, meta_int(meta, "batch_size"));
  FRUGAL_ASSIGN_OR_RETURN(samples, meta_int(meta, "samples"));
  if (step < 0 || saved_spe <= 0 || saved_world <= 0 || saved_batch <= 0) {
    return data_loss("checkpoint meta has an invalid data cursor (" + restored.path + ")");
  }
  if (const auto it = meta.find("train_seconds"); it != meta.end() && it->is_number()) {
    train_seconds = resumed_train_seconds = it->get<double>();
  }
  const int64_t global_batch = comm.size() * options.batch_size;
  if (saved_spe == steps_per_epoch && saved_world * saved_batch == global_batch) {
    step_count = step;
    if (const auto it = restored.per_rank.find("cursor/epoch_loss");
        it != restored.per_rank.end() && it->second.data.size() == sizeof(epoch_loss_state)) {
      std::memcpy(epoch_loss_state.data(), it->second.data.data(), sizeof(epoch_loss_state));
      epoch_loss_sum = epoch_loss_state[0];
      epoch_batches = static_cast<int64_t>(epoch_loss_state[1]);
      indices_epoch = step_count / steps_per_epoch;
      epoch_indices = shard_indices(shard, indices_epoch);
    }
  } else {
    const int64_t epoch = step / saved_spe;
    const int64_t position = (step % saved_spe) * saved_world * saved_batch;
    step_count = epoch * steps_per_epoch + std::min(position / global_batch, steps_per_epoch);
    if (comm.rank() == 0) {
      spdlog::warn(
          "checkpoint saved with {} workers x batch {}, resumed with {} x {}: the data "
          "stream goes on at step {} (epoch {}, sample {} of the epoch)",
          saved_world, saved_batch, comm.size(), options.batch_size, step_count, epoch, position);
    }
  }
  step_count = std::min(step_count, total_steps);
  return Status::ok();
}

Status Trainer::Impl::save_checkpoint() {
  std::vector<ckpt::StateSource> sources = state->sources();
  epoch_loss_state = {epoch_loss_sum, static_cast<double>(epoch_batches)};
  sources.push_back({{"cursor/epoch_loss", DType::kF64, {2}, int64_t{sizeof(epoch_loss_state)}},
                     ckpt::Sharing::kPerRank,
                     reinterpret_cast<const std::byte*>(epoch_loss_state.data()),
                     false});
  nlohmann::json cursor = {{"step", step_count},
                           {"epoch", step_count / steps_per_epoch},
                           {"steps_per_epoch", steps_per_epoch},
                           {"world_size", comm.size()},
                           {"batch_size", options.batch_size},
                           {"samples", samples},
                           {"train_seconds", train_seconds}};
  last_saved_step = step_count;
  return checkpointer->save(step_count, std::move(sources), std::move(cursor));
}

Status Trainer::Impl::maybe_save() {
  if (!checkpointer) return Status::ok();
  const bool last = step_count == total_steps;
  if (step_count == next_save_step || last) {
    const bool interval = options.checkpoint.interval_seconds > 0;
    const bool due = last || !interval || interval_calibrated;
    if (interval) {
      // Every rank must save at the same steps: the step time is agreed (the slowest rank's).
      double mean = (train_seconds - resumed_train_seconds) /
                    static_cast<double>(std::max<int64_t>(step_count - start_step, 1));
      FRUGAL_RETURN_IF_ERROR(comm.allreduce({&mean, DType::kF64, {1}}, ReduceOp::kMax));
      steps_per_save = std::max<int64_t>(
          1, std::llround(options.checkpoint.interval_seconds / std::max(mean, 1e-9)));
      interval_calibrated = true;
    }
    if (due && last_saved_step != step_count) FRUGAL_RETURN_IF_ERROR(save_checkpoint());
    next_save_step = step_count + steps_per_save;
  }
  if (last) checkpointer->wait();
  checkpointer->step_ended(step_count);
  return Status::ok();
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
  if (checkpointer) checkpointer->forward_begins();
  {
    ScopedTraceEvent event(timeline, phase::kForward);
    torch::Tensor logits = model->forward(batch.input);
    loss = F::cross_entropy(logits.reshape({-1, logits.size(-1)}), batch.target.reshape({-1}));
  }
  if (checkpointer) checkpointer->backward_begins();
  {
    ScopedTraceEvent event(timeline, phase::kBackward);
    loss.backward();
  }
  Status optimizer_error;
  const auto step_params = [&](const Bucket& bucket) {
    if (!optimizer_error.is_ok()) return;
    // A lazy checkpoint snapshot must hold the step's parameters before any of them changes.
    if (checkpointer) checkpointer->before_update();
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
    FRUGAL_RETURN_IF_ERROR(guarded("saving a checkpoint", [&] { return m.maybe_save(); }));
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
  summary.resumed_from_step = m.resumed_from;
  if (m.checkpointer) {
    const ckpt::CheckpointStats stats = m.checkpointer->stats();
    summary.checkpoints_saved = stats.saves_started;
    summary.checkpoints_committed = stats.saves_committed;
    summary.checkpoints_failed = stats.saves_failed;
    std::vector<double> stalls = stats.stall_seconds;
    if (!stalls.empty()) {
      summary.checkpoint_stall_ms_p50 = median(stalls) * 1e3;
      summary.checkpoint_stall_ms_max = *std::max_element(stalls.begin(), stalls.end()) * 1e3;
    }
  }
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
