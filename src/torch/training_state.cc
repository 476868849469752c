#include "torch/training_state.h"

#include <cstring>
#include <map>

namespace frugal {
namespace {

constexpr std::string_view kCompressPrefix = "compress/";

Result<DType> dtype_of(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32:
      return DType::kF32;
    case torch::kFloat64:
      return DType::kF64;
    case torch::kInt64:
      return DType::kI64;
    case torch::kInt32:
      return DType::kI32;
    default:
      return unimplemented(std::string("checkpointing a tensor of type ") +
                           c10::toString(t.scalar_type()));
  }
}

ckpt::EntryInfo info_of(const std::string& name, DType dtype, const Shape& shape) {
  return {name, dtype, shape, ckpt::entry_bytes(dtype, shape)};
}

std::string describe(const ckpt::EntryInfo& e) {
  std::string shape;
  for (int64_t d : e.shape) shape += (shape.empty() ? "" : "x") + std::to_string(d);
  return std::string(dtype_name(e.dtype)) + "[" + shape + "]";
}

}  // namespace

TrainingState::TrainingState(
    const std::vector<std::string>& param_names, const std::vector<torch::Tensor>& params,
    const std::vector<std::pair<std::string, torch::Tensor>>& named_buffers,
    const std::vector<std::unique_ptr<torch::optim::Optimizer>>& optimizers,
    const OptimizerOptions& optimizer_options, Compressor* compressor, Synchronizer* sync)
    : params_(params),
      optimizers_(optimizers),
      optimizer_options_(optimizer_options),
      compressor_(compressor),
      sync_(sync) {
  for (size_t i = 0; i < params.size(); ++i) {
    slots_.push_back({"param/" + param_names[i], params[i], true});
  }
  // BatchNorm's running statistics change in every forward pass, before any optimizer step.
  for (const auto& [name, buffer] : named_buffers) {
    slots_.push_back({"buffer/" + name, buffer, false});
  }
  for (size_t i = 0; i < params.size(); ++i) add_optimizer_slots(i, param_names[i]);
}

void TrainingState::add_optimizer_slots(size_t index, const std::string& param_name) {
  OptimizerStateTensors state =
      materialize_optimizer_state(*optimizers_[index], optimizer_options_, params_[index]);
  for (auto& [field, tensor] : state.tensors) {
    slots_.push_back({"optim/" + param_name + "/" + field, tensor, true});
  }
  if (state.step.defined()) {
    slots_.push_back({"optim/" + param_name + "/step", state.step, false});
    step_mirrors_.emplace_back(index, state.step);
  }
}

std::vector<ckpt::StateSource> TrainingState::sources() {
  for (auto& [index, mirror] : step_mirrors_) {
    copy_step_counter(*optimizers_[index], optimizer_options_, params_[index], mirror,
                      StepCounterCopy::kToMirror);
  }
  std::vector<ckpt::StateSource> out;
  for (const Slot& slot : slots_) {
    const DType dtype = dtype_of(slot.tensor).value();  // the types above are all supported
    const Shape shape(slot.tensor.sizes().begin(), slot.tensor.sizes().end());
    out.push_back({info_of(slot.name, dtype, shape), ckpt::Sharing::kReplicated,
                   static_cast<const std::byte*>(slot.tensor.data_ptr()), slot.stable});
  }
  if (compressor_ != nullptr) {
    exported_ = compressor_->export_state();
    for (const auto& [key, state] : exported_) {
      out.push_back({info_of(std::string(kCompressPrefix) + key, state.dtype, state.shape),
                     ckpt::Sharing::kPerRank, state.data.data(), false});
    }
  }
  return out;
}

Status TrainingState::apply(const ckpt::RestoredState& restored) {
  const ckpt::PackedLayout& layout = restored.manifest.replicated;
  std::map<std::string, size_t> saved;  // name -> index in the manifest's layout
  for (size_t i = 0; i < layout.entries.size(); ++i) {
    saved[layout.entries[i].name] = i;
  }
  const std::string where = " (checkpoint " + restored.path + ")";
  for (const Slot& slot : slots_) {
    auto it = saved.find(slot.name);
    if (it == saved.end()) {
      return failed_precondition("the checkpoint has no '" + slot.name +
                                 "': it was saved by another model or optimizer" + where);
    }
    const ckpt::EntryInfo& entry = layout.entries[it->second];
    FRUGAL_ASSIGN_OR_RETURN(const DType dtype, dtype_of(slot.tensor));
    const Shape shape(slot.tensor.sizes().begin(), slot.tensor.sizes().end());
    const ckpt::EntryInfo ours = info_of(slot.name, dtype, shape);
    if (entry.dtype != ours.dtype || entry.shape != ours.shape) {
      return failed_precondition("'" + slot.name + "' is " + describe(entry) +
                                 " in the checkpoint but " + describe(ours) + " here" + where);
    }
    std::memcpy(slot.tensor.data_ptr(), restored.replicated.data() + layout.offsets[it->second],
                static_cast<size_t>(entry.bytes));
    saved.erase(it);
  }
  if (!saved.empty()) {
    return failed_precondition("the checkpoint holds '" + saved.begin()->first +
                               "', which this run does not have: it was saved by another "
                               "model or optimizer" +
                               where);
  }
  for (auto& [index, mirror] : step_mirrors_) {
    copy_step_counter(*optimizers_[index], optimizer_options_, params_[index], mirror,
                      StepCounterCopy::kFromMirror);
  }
  if (compressor_ == nullptr) return Status::ok();
  StateDict state;
  for (const auto& [name, blob] : restored.per_rank) {
    if (!name.starts_with(kCompressPrefix)) continue;
    state[name.substr(kCompressPrefix.size())] =
        StateTensor{blob.info.dtype, blob.info.shape, blob.data};
  }
  sync_->import_compressor_state(std::move(state));
  return Status::ok();
}

}  // namespace frugal
