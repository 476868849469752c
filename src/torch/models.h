// The models `frugal train` trains, chosen by name: mlp, cnn, resnet20 (image classification on
// 1x28x28 inputs, 10 classes) and lstm, gpt-tiny (character-level language models). Built on
// LibTorch modules; a Model is used by one training thread at a time.
#pragma once

#include <torch/nn/module.h>
#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace frugal {

enum class ModelTask { kImageClassification, kLanguageModel };

struct ModelOptions {
  int64_t num_classes = 10;   // image models
  int64_t vocab_size = 0;     // language models: required, > 1
  int64_t max_seq_len = 128;  // gpt-tiny's positional table
};

// Image models map [batch, 1, 28, 28] floats to [batch, classes] logits; language models map
// [batch, time] int64 tokens to [batch, time, vocab] logits.
class Model : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(torch::Tensor input) = 0;
  virtual ModelTask task() const = 0;
};

struct ModelInfo {
  std::string name;
  ModelTask task;
  std::string summary;  // one line for --help
};
const std::vector<ModelInfo>& model_catalog();

// Builds `name` with parameters initialized from LibTorch's generator (seed it first with
// torch::manual_seed for reproducible weights). Unknown names list the valid ones.
Result<std::shared_ptr<Model>> make_model(const std::string& name, const ModelOptions& options);

int64_t parameter_count(const torch::nn::Module& module);

}  // namespace frugal
