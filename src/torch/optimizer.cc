#include "torch/optimizer.h"

#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <algorithm>

namespace frugal {

const std::vector<std::string>& optimizer_names() {
  static const std::vector<std::string> names = {"sgd", "adam", "adamw"};
  return names;
}

Result<std::unique_ptr<torch::optim::Optimizer>> make_optimizer(
    const OptimizerOptions& o, const std::vector<torch::Tensor>& parameters) {
  const auto& names = optimizer_names();
  if (std::find(names.begin(), names.end(), o.name) == names.end()) {
    return invalid_argument("unknown optimizer '" + o.name + "'; valid: sgd, adam, adamw");
  }
  if (!(o.lr > 0)) return invalid_argument("--lr must be > 0");
  if (!(o.weight_decay >= 0)) return invalid_argument("--weight-decay must be >= 0");
  if (o.name == "sgd") {
    if (!(o.momentum >= 0 && o.momentum < 1)) {
      return invalid_argument("--momentum must be in [0, 1)");
    }
    if (o.nesterov && o.momentum == 0) {
      return invalid_argument("--nesterov needs --momentum > 0");
    }
    return std::unique_ptr<torch::optim::Optimizer>(
        std::make_unique<torch::optim::SGD>(parameters, torch::optim::SGDOptions(o.lr)
                                                            .momentum(o.momentum)
                                                            .nesterov(o.nesterov)
                                                            .weight_decay(o.weight_decay)));
  }
  if (!(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1)) {
    return invalid_argument("--beta1 and --beta2 must be in [0, 1)");
  }
  if (!(o.eps > 0)) return invalid_argument("--eps must be > 0");
  if (o.name == "adam") {
    return std::unique_ptr<torch::optim::Optimizer>(
        std::make_unique<torch::optim::Adam>(parameters, torch::optim::AdamOptions(o.lr)
                                                             .betas({o.beta1, o.beta2})
                                                             .eps(o.eps)
                                                             .weight_decay(o.weight_decay)));
  }
  return std::unique_ptr<torch::optim::Optimizer>(
      std::make_unique<torch::optim::AdamW>(parameters, torch::optim::AdamWOptions(o.lr)
                                                            .betas({o.beta1, o.beta2})
                                                            .eps(o.eps)
                                                            .weight_decay(o.weight_decay)));
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

namespace {

// LibTorch keys per-parameter state by the parameter's TensorImpl address, as a string.
std::string state_key(const torch::Tensor& param) {
  return c10::guts::to_string(param.unsafeGetTensorImpl());
}

template <typename State>
State& adam_state(torch::optim::Optimizer& optimizer, const torch::Tensor& param) {
  auto& slot = optimizer.state()[state_key(param)];
  if (!slot) {
    // What Adam's and AdamW's first step create.
    auto state = std::make_unique<State>();
    state->step(0);
    state->exp_avg(torch::zeros_like(param, torch::MemoryFormat::Preserve));
    state->exp_avg_sq(torch::zeros_like(param, torch::MemoryFormat::Preserve));
    slot = std::move(state);
  }
  return static_cast<State&>(*slot);
}

template <typename State>
OptimizerStateTensors adam_tensors(torch::optim::Optimizer& optimizer, const torch::Tensor& param) {
  State& state = adam_state<State>(optimizer, param);
  OptimizerStateTensors out;
  out.tensors = {{"exp_avg", state.exp_avg()}, {"exp_avg_sq", state.exp_avg_sq()}};
  out.step = torch::full({1}, state.step(), torch::kInt64);
  return out;
}

}  // namespace

OptimizerStateTensors materialize_optimizer_state(torch::optim::Optimizer& optimizer,
                                                  const OptimizerOptions& options,
                                                  const torch::Tensor& param) {
  if (options.name == "adam") return adam_tensors<torch::optim::AdamParamState>(optimizer, param);
  if (options.name == "adamw") {
    return adam_tensors<torch::optim::AdamWParamState>(optimizer, param);
  }
  OptimizerStateTensors out;
  if (options.momentum == 0) return out;  // plain SGD keeps no state
  auto& slot = optimizer.state()[state_key(param)];
  if (!slot) {
    // SGD's first step clones the gradient into the buffer; momentum * 0 + gradient is the same.
    auto state = std::make_unique<torch::optim::SGDParamState>();
    state->momentum_buffer(torch::zeros_like(param, torch::MemoryFormat::Preserve));
    slot = std::move(state);
  }
  out.tensors = {
      {"momentum_buffer", static_cast<torch::optim::SGDParamState&>(*slot).momentum_buffer()}};
  return out;
}

void copy_step_counter(torch::optim::Optimizer& optimizer, const OptimizerOptions& options,
                       const torch::Tensor& param, torch::Tensor& mirror, StepCounterCopy how) {
  const auto copy = [&](auto& state) {
    if (how == StepCounterCopy::kToMirror) {
      mirror.data_ptr<int64_t>()[0] = state.step();
    } else {
      state.step(mirror.data_ptr<int64_t>()[0]);
    }
  };
  if (options.name == "adam") copy(adam_state<torch::optim::AdamParamState>(optimizer, param));
  if (options.name == "adamw") copy(adam_state<torch::optim::AdamWParamState>(optimizer, param));
}

}  // namespace frugal
