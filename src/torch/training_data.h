// The datasets `frugal train` reads, as LibTorch batches: Fashion-MNIST (Debian's IDX files),
// a character-level text corpus, and generated data. A TrainingData is immutable after loading,
// so batch() may be called from any thread.
#pragma once

#include <torch/types.h>

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "torch/models.h"
#include "torch/train_options.h"

namespace frugal {

enum class Split { kTrain, kTest };

struct Batch {
  torch::Tensor input;   // images: [B, 1, 28, 28] f32 (normalized); text: [B, T] i64 tokens
  torch::Tensor target;  // images: [B] i64 labels; text: [B, T] i64 next tokens
};

const std::vector<std::string>& dataset_names();

class TrainingData {
 public:
  virtual ~TrainingData() = default;
  // e.g. "fashion-mnist (/usr/share/datasets/fashion-mnist)"
  virtual std::string description() const = 0;
  virtual ModelTask task() const = 0;
  virtual int64_t size(Split split) const = 0;
  // Language models: the vocabulary size (0 for images).
  virtual int64_t vocab_size() const { return 0; }
  // Predictions per sample: 1 for images, seq_len for text (perplexity is per token).
  virtual int64_t targets_per_sample() const { return 1; }
  // The samples at `indices` (each in [0, size(split))).
  virtual Batch batch(Split split, std::span<const int64_t> indices) const = 0;
};

// Loads the dataset for a model of `task`. Fails with the file and problem named, or when the
// dataset does not suit the task (text for an image model, ...).
Result<std::shared_ptr<const TrainingData>> load_training_data(const DataOptions& options,
                                                               ModelTask task);

}  // namespace frugal
