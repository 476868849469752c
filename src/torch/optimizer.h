// The optimizers `frugal train` offers, by name: sgd (momentum, Nesterov, weight decay), adam and
// adamw, built on LibTorch's implementations. Used by one training thread.
#pragma once

#include <torch/optim/optimizer.h>

#include <memory>
#include <string>
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

}  // namespace frugal
