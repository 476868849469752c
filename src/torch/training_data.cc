#include "torch/training_data.h"

#include <torch/torch.h>

#include <algorithm>

#include "torch/idx_file.h"
#include "torch/synthetic_images.h"
#include "torch/text_corpus.h"

namespace frugal {
namespace {

// Fashion-MNIST's training-set pixel mean and standard deviation (of x / 255).
constexpr double kPixelMean = 0.2860;
constexpr double kPixelStd = 0.3530;

torch::Tensor index_tensor(std::span<const int64_t> indices) {
  return torch::from_blob(const_cast<int64_t*>(indices.data()),
                          {static_cast<int64_t>(indices.size())}, torch::kInt64);
}

// Images stay bytes in memory (a quarter of f32) and are normalized per batch, which costs a
// few microseconds per batch against milliseconds of compute.
class ImageData final : public TrainingData {
 public:
  ImageData(std::string description, ImageClassificationSplit train, ImageClassificationSplit test)
      : description_(std::move(description)),
        train_(to_tensors(std::move(train))),
        test_(to_tensors(std::move(test))) {}

  std::string description() const override { return description_; }
  ModelTask task() const override { return ModelTask::kImageClassification; }
  int64_t size(Split split) const override { return part(split).labels.size(0); }
  Batch batch(Split split, std::span<const int64_t> indices) const override {
    const Part& p = part(split);
    const torch::Tensor index = index_tensor(indices);
    torch::Tensor images = p.images.index_select(0, index).to(torch::kFloat32);
    images = images.mul_(1.0 / (255.0 * kPixelStd)).sub_(kPixelMean / kPixelStd).unsqueeze(1);
    return {images, p.labels.index_select(0, index)};
  }

 private:
  struct Part {
    torch::Tensor images;  // [N, rows, cols] u8
    torch::Tensor labels;  // [N] i64
  };
  static Part to_tensors(ImageClassificationSplit split) {
    Part p;
    p.images =
        torch::from_blob(split.images.data(), {split.count, split.rows, split.cols}, torch::kUInt8)
            .clone();
    p.labels =
        torch::from_blob(split.labels.data(), {split.count}, torch::kUInt8).to(torch::kInt64);
    return p;
  }
  const Part& part(Split split) const { return split == Split::kTrain ? train_ : test_; }

  std::string description_;
  Part train_, test_;
};

// Sample i of a split is tokens [i*T, i*T + T] of its stream: inputs are the first T, targets
// the last T.
class TextData final : public TrainingData {
 public:
  TextData(TextCorpus corpus, int64_t seq_len)
      : description_("text (" + corpus.source + ", " + std::to_string(corpus.vocab_size()) +
                     " symbols)"),
        vocab_size_(corpus.vocab_size()),
        seq_len_(seq_len),
        train_(to_tensor(corpus.train)),
        test_(to_tensor(corpus.test)),
        train_sequences_(sequences_in(corpus.train, seq_len)),
        test_sequences_(sequences_in(corpus.test, seq_len)) {}

  std::string description() const override { return description_; }
  ModelTask task() const override { return ModelTask::kLanguageModel; }
  int64_t size(Split split) const override {
    return split == Split::kTrain ? train_sequences_ : test_sequences_;
  }
  int64_t vocab_size() const override { return vocab_size_; }
  int64_t targets_per_sample() const override { return seq_len_; }
  Batch batch(Split split, std::span<const int64_t> indices) const override {
    const torch::Tensor& tokens = split == Split::kTrain ? train_ : test_;
    // Row i gathers tokens start_i + [0, T]: one index_select instead of B narrow+stack calls.
    const torch::Tensor starts = index_tensor(indices).mul(seq_len_).unsqueeze(1);
    const torch::Tensor rows = starts + torch::arange(seq_len_ + 1, torch::kInt64).unsqueeze(0);
    const torch::Tensor window = tokens.index_select(0, rows.flatten()).view(rows.sizes());
    return {window.narrow(1, 0, seq_len_).contiguous(), window.narrow(1, 1, seq_len_).contiguous()};
  }

 private:
  static torch::Tensor to_tensor(const std::vector<uint8_t>& tokens) {
    return torch::from_blob(const_cast<uint8_t*>(tokens.data()),
                            {static_cast<int64_t>(tokens.size())}, torch::kUInt8)
        .to(torch::kInt64);
  }
  std::string description_;
  int64_t vocab_size_, seq_len_;
  torch::Tensor train_, test_;
  int64_t train_sequences_, test_sequences_;
};

Result<std::shared_ptr<const TrainingData>> load_images(const DataOptions& o) {
  if (o.dataset == "synthetic") {
    return std::shared_ptr<const TrainingData>(
        std::make_shared<ImageData>("synthetic images (seed " + std::to_string(o.seed) + ")",
                                    make_synthetic_images(o.synthetic_train_size, o.seed, 0),
                                    make_synthetic_images(o.synthetic_test_size, o.seed, 1)));
  }
  const std::string dir = o.data_dir.empty() ? kDefaultFashionMnistDir : o.data_dir;
  FRUGAL_ASSIGN_OR_RETURN(ImageClassificationSplit train, load_fashion_mnist(dir, "train"));
  FRUGAL_ASSIGN_OR_RETURN(ImageClassificationSplit test, load_fashion_mnist(dir, "t10k"));
  return std::shared_ptr<const TrainingData>(std::make_shared<ImageData>(
      "fashion-mnist (" + dir + ")", std::move(train), std::move(test)));
}

Result<std::shared_ptr<const TrainingData>> load_text(const DataOptions& o) {
  if (o.seq_len <= 0) return invalid_argument("--seq-len must be > 0");
  if (o.dataset == "synthetic") {
    return std::shared_ptr<const TrainingData>(std::make_shared<TextData>(
        make_synthetic_text(o.synthetic_train_size * o.seq_len / 8,
                            o.synthetic_test_size * o.seq_len / 8, 32, o.seed),
        o.seq_len));
  }
  if (o.data_path.empty()) {
    return invalid_argument(
        "language models train on a text file: pass --data PATH (any text, e.g. "
        "/usr/share/common-licenses/GPL-3), or --dataset synthetic");
  }
  FRUGAL_ASSIGN_OR_RETURN(TextCorpus corpus, load_text_corpus(o.data_path, o.seq_len));
  return std::shared_ptr<const TrainingData>(
      std::make_shared<TextData>(std::move(corpus), o.seq_len));
}

}  // namespace

const std::vector<std::string>& dataset_names() {
  static const std::vector<std::string> names = {"auto", "fashion-mnist", "synthetic", "text"};
  return names;
}

Result<std::shared_ptr<const TrainingData>> load_training_data(const DataOptions& options,
                                                               ModelTask task) {
  const auto& names = dataset_names();
  if (std::find(names.begin(), names.end(), options.dataset) == names.end()) {
    return invalid_argument("unknown dataset '" + options.dataset +
                            "'; valid: auto, fashion-mnist, synthetic, text");
  }
  const bool image_model = task == ModelTask::kImageClassification;
  if (image_model && options.dataset == "text") {
    return invalid_argument(
        "--dataset text is for language models (--model lstm or gpt-tiny); image models take "
        "fashion-mnist or synthetic");
  }
  if (!image_model && options.dataset == "fashion-mnist") {
    return invalid_argument(
        "--dataset fashion-mnist is for image models (mlp, cnn, resnet20); language models "
        "take text (--data PATH) or synthetic");
  }
  try {
    return image_model ? load_images(options) : load_text(options);
  } catch (const std::exception& e) {  // LibTorch reports by exception: the boundary is here
    return internal_error(std::string("loading the dataset failed: ") + e.what());
  }
}

}  // namespace frugal
