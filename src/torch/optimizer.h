// The optimizers `frugal train` offers, by name: sgd (momentum, Nesterov, weight decay), adam and
// adamw, built on LibTorch's implementations. Used by one training thread.
#pragma once

#include <torch/optim/optimizer.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "torch/train_options.h"

namespace frugal {

const std::vector<std::string>& optimizer_names();

// Fails on an unknown name (listing the valid ones) or an out-of-range setting, naming the flag.
Result<std::unique_ptr<torch::optim::Optimizer>> make_optimizer(
    const OptimizerOptions& options, const std::vector<torch::Tensor>& parameters);

// Sets the learning rate of every parameter group.
void set_learning_rate(torch::optim::Optimizer& optimizer, double lr);

// The state one optimizer keeps for one parameter, as tensors a checkpoint can copy in place:
// "momentum_buffer" (sgd with momentum) or "exp_avg" and "exp_avg_sq" (adam, adamw), plus Adam's
// step counter, which LibTorch keeps as a plain integer and is mirrored here in a one-element
// int64 tensor (copy_step_counter moves it across).
struct OptimizerStateTensors {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  torch::Tensor step;  // undefined for sgd
};

// Creates `param`'s state in `optimizer` if it has not stepped yet, with the zeros its first
// step would create (so a checkpoint holds the same entries at every step), and returns it.
// REQUIRES: `optimizer` was made by make_optimizer(options, {param}).
OptimizerStateTensors materialize_optimizer_state(torch::optim::Optimizer& optimizer,
                                                  const OptimizerOptions& options,
                                                  const torch::Tensor& param);

// Adam's step counter between LibTorch's state and the mirror tensor, in either direction.
enum class StepCounterCopy { kToMirror, kFromMirror };
void copy_step_counter(torch::optim::Optimizer& optimizer, const OptimizerOptions& options,
                       const torch::Tensor& param, torch::Tensor& mirror, StepCounterCopy how);

}  // namespace frugal
