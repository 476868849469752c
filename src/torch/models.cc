#include "torch/models.h"

#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/modules/pooling.h>
#include <torch/nn/modules/rnn.h>

#include <cmath>

namespace frugal {
namespace {

namespace nn = torch::nn;

// 784-2048-2048-10: 5.8M parameters and little compute per byte, so communication dominates.
class Mlp final : public Model {
 public:
  explicit Mlp(int64_t classes)
      : fc1_(register_module("fc1", nn::Linear(784, 2048))),
        fc2_(register_module("fc2", nn::Linear(2048, 2048))),
        fc3_(register_module("fc3", nn::Linear(2048, classes))) {}
  torch::Tensor forward(torch::Tensor x) override {
    x = x.flatten(1);
    return fc3_(torch::relu(fc2_(torch::relu(fc1_(x)))));
  }
  ModelTask task() const override { return ModelTask::kImageClassification; }

 private:
  nn::Linear fc1_, fc2_, fc3_;
};

// Two 5x5 conv layers (32, 64 channels, each followed by 2x2 max pooling) and a 1024-wide
// classifier, as in the TensorFlow MNIST tutorial: 3.3M parameters.
class Cnn final : public Model {
 public:
  explicit Cnn(int64_t classes)
      : conv1_(register_module("conv1", nn::Conv2d(nn::Conv2dOptions(1, 32, 5).padding(2)))),
        conv2_(register_module("conv2", nn::Conv2d(nn::Conv2dOptions(32, 64, 5).padding(2)))),
        fc1_(register_module("fc1", nn::Linear(64 * 7 * 7, 1024))),
        fc2_(register_module("fc2", nn::Linear(1024, classes))) {}
  torch::Tensor forward(torch::Tensor x) override {
    x = torch::max_pool2d(torch::relu(conv1_(x)), 2);
    x = torch::max_pool2d(torch::relu(conv2_(x)), 2);
    return fc2_(torch::relu(fc1_(x.flatten(1))));
  }
  ModelTask task() const override { return ModelTask::kImageClassification; }

 private:
  nn::Conv2d conv1_, conv2_;
  nn::Linear fc1_, fc2_;
};

// He et al.'s CIFAR ResNet basic block: two 3x3 conv + BatchNorm; a 1x1 conv + BatchNorm
// shortcut where the shape changes.
class BasicBlock final : public nn::Module {
 public:
  BasicBlock(int64_t in, int64_t out, int64_t stride)
      : conv1_(register_module(
            "conv1",
            nn::Conv2d(nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false)))),
        bn1_(register_module("bn1", nn::BatchNorm2d(out))),
        conv2_(register_module("conv2",
                               nn::Conv2d(nn::Conv2dOptions(out, out, 3).padding(1).bias(false)))),
        bn2_(register_module("bn2", nn::BatchNorm2d(out))) {
    if (stride != 1 || in != out) {
      shortcut_ = register_module(
          "shortcut",
          nn::Sequential(nn::Conv2d(nn::Conv2dOptions(in, out, 1).stride(stride).bias(false)),
                         nn::BatchNorm2d(out)));
    }
  }
  torch::Tensor forward(torch::Tensor x) {
    torch::Tensor y = torch::relu(bn1_(conv1_(x)));
    y = bn2_(conv2_(y));
    return torch::relu(y + (shortcut_.is_empty() ? x : shortcut_->forward(x)));
  }

 private:
  nn::Conv2d conv1_;
  nn::BatchNorm2d bn1_;
  nn::Conv2d conv2_;
  nn::BatchNorm2d bn2_;
  nn::Sequential shortcut_{nullptr};
};

// ResNet-20 (3 stages x 3 blocks, 16/32/64 channels) on 1x28x28 inputs: 28 -> 14 -> 7.
class ResNet20 final : public Model {
 public:
  explicit ResNet20(int64_t classes)
      : stem_(register_module("conv1",
                              nn::Conv2d(nn::Conv2dOptions(1, 16, 3).padding(1).bias(false)))),
        bn_(register_module("bn1", nn::BatchNorm2d(16))),
        fc_(register_module("fc", nn::Linear(64, classes))) {
    // One ModuleList per stage, so parameters are named as torchvision's: layer1.0.conv1.weight.
    int64_t in = 16;
    for (int stage = 0; stage < 3; ++stage) {
      const int64_t out = 16 << stage;
      auto layer = register_module("layer" + std::to_string(stage + 1), nn::ModuleList());
      for (int block = 0; block < 3; ++block) {
        auto b = std::make_shared<BasicBlock>(in, out, stage > 0 && block == 0 ? 2 : 1);
        layer->push_back(b);
        blocks_.push_back(b);
        in = out;
      }
    }
  }
  torch::Tensor forward(torch::Tensor x) override {
    x = torch::relu(bn_(stem_(x)));
    for (auto& block : blocks_) x = block->forward(x);
    return fc_(x.mean({2, 3}));
  }
  ModelTask task() const override { return ModelTask::kImageClassification; }

 private:
  nn::Conv2d stem_;
  nn::BatchNorm2d bn_;
  std::vector<std::shared_ptr<BasicBlock>> blocks_;
  nn::Linear fc_;
};

// A 2-layer LSTM language model: embedding 128, hidden 256.
class LstmLm final : public Model {
 public:
  explicit LstmLm(int64_t vocab)
      : embedding_(register_module("embedding", nn::Embedding(vocab, 128))),
        lstm_(register_module("lstm",
                              nn::LSTM(nn::LSTMOptions(128, 256).num_layers(2).batch_first(true)))),
        head_(register_module("head", nn::Linear(256, vocab))) {}
  torch::Tensor forward(torch::Tensor tokens) override {
    auto output = std::get<0>(lstm_(embedding_(tokens)));
    return head_(output);
  }
  ModelTask task() const override { return ModelTask::kLanguageModel; }

 private:
  nn::Embedding embedding_;
  nn::LSTM lstm_;
  nn::Linear head_;
};

// Pre-LayerNorm causal self-attention block (GPT-2's layout).
class DecoderBlock final : public nn::Module {
 public:
  DecoderBlock(int64_t width, int64_t heads)
      : heads_(heads),
        ln1_(register_module("ln1", nn::LayerNorm(nn::LayerNormOptions({width})))),
        qkv_(register_module("qkv", nn::Linear(width, 3 * width))),
        proj_(register_module("proj", nn::Linear(width, width))),
        ln2_(register_module("ln2", nn::LayerNorm(nn::LayerNormOptions({width})))),
        fc_(register_module("fc", nn::Linear(width, 4 * width))),
        out_(register_module("out", nn::Linear(4 * width, width))) {}

  torch::Tensor forward(torch::Tensor x) {
    const int64_t batch = x.size(0), time = x.size(1), width = x.size(2);
    auto qkv =
        qkv_(ln1_(x)).view({batch, time, 3, heads_, width / heads_}).permute({2, 0, 3, 1, 4});
    auto q = qkv[0], k = qkv[1], v = qkv[2];  // [batch, heads, time, head_width]
    auto scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(double(width / heads_));
    auto mask = torch::ones({time, time}, torch::kBool).triu(1);
    scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
    auto attended = torch::matmul(torch::softmax(scores, -1), v);
    x = x + proj_(attended.permute({0, 2, 1, 3}).reshape({batch, time, width}));
    return x + out_(torch::gelu(fc_(ln2_(x))));
  }

 private:
  int64_t heads_;
  nn::LayerNorm ln1_;
  nn::Linear qkv_, proj_;
  nn::LayerNorm ln2_;
  nn::Linear fc_, out_;
};

// A small decoder-only transformer LM: width 128, 4 heads, 4 blocks.
class GptTiny final : public Model {
 public:
  GptTiny(int64_t vocab, int64_t max_seq_len)
      : token_(register_module("token_embedding", nn::Embedding(vocab, kWidth))),
        position_(register_module("position_embedding", nn::Embedding(max_seq_len, kWidth))),
        ln_(register_module("ln_final", nn::LayerNorm(nn::LayerNormOptions({kWidth})))),
        head_(register_module("head", nn::Linear(kWidth, vocab))) {
    for (int i = 0; i < kBlocks; ++i) {
      blocks_.push_back(
          register_module("block" + std::to_string(i), std::make_shared<DecoderBlock>(kWidth, 4)));
    }
  }
  torch::Tensor forward(torch::Tensor tokens) override {
    auto positions = torch::arange(tokens.size(1), torch::kLong);
    auto x = token_(tokens) + position_(positions);
    for (auto& block : blocks_) x = block->forward(x);
    return head_(ln_(x));
  }
  ModelTask task() const override { return ModelTask::kLanguageModel; }

 private:
  static constexpr int64_t kWidth = 128;
  static constexpr int kBlocks = 4;
  nn::Embedding token_, position_;
  std::vector<std::shared_ptr<DecoderBlock>> blocks_;
  nn::LayerNorm ln_;
  nn::Linear head_;
};

}  // namespace

const std::vector<ModelInfo>& model_catalog() {
  static const std::vector<ModelInfo> catalog = {
      {"mlp", ModelTask::kImageClassification, "784-2048-2048-10 perceptron, 5.8M parameters"},
      {"cnn", ModelTask::kImageClassification, "two 5x5 conv layers + 1024-wide classifier, 3.3M"},
      {"resnet20", ModelTask::kImageClassification, "ResNet-20 with BatchNorm, 0.27M"},
      {"lstm", ModelTask::kLanguageModel, "2-layer LSTM language model (128/256)"},
      {"gpt-tiny", ModelTask::kLanguageModel, "decoder-only transformer LM, 4 blocks of width 128"},
  };
  return catalog;
}

Result<std::shared_ptr<Model>> make_model(const std::string& name, const ModelOptions& options) {
  // LibTorch reports errors by exception; this is the boundary where they become a Status.
  try {
    if (name == "mlp") return std::shared_ptr<Model>(std::make_shared<Mlp>(options.num_classes));
    if (name == "cnn") return std::shared_ptr<Model>(std::make_shared<Cnn>(options.num_classes));
    if (name == "resnet20") {
      return std::shared_ptr<Model>(std::make_shared<ResNet20>(options.num_classes));
    }
    if (name == "lstm" || name == "gpt-tiny") {
      if (options.vocab_size < 2) {
        return invalid_argument("model " + name + " needs a vocabulary of at least 2 symbols");
      }
      if (name == "lstm")
        return std::shared_ptr<Model>(std::make_shared<LstmLm>(options.vocab_size));
      return std::shared_ptr<Model>(
          std::make_shared<GptTiny>(options.vocab_size, options.max_seq_len));
    }
  } catch (const std::exception& e) {
    return internal_error("building model " + name + ": " + e.what());
  }
  std::string valid;
  for (const ModelInfo& m : model_catalog()) valid += (valid.empty() ? "" : ", ") + m.name;
  return invalid_argument("unknown model '" + name + "'; valid: " + valid);
}

int64_t parameter_count(const torch::nn::Module& module) {
  int64_t total = 0;
  for (const auto& p : module.parameters()) total += p.numel();
  return total;
}

}  // namespace frugal
