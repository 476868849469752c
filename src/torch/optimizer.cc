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

}  // namespace frugal
