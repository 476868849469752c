#include "torch/models.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace frugal {
namespace {

int64_t linear(int64_t in, int64_t out) { return in * out + out; }
int64_t conv(int64_t in, int64_t out, int64_t k, bool bias) {
  return in * out * k * k + (bias ? out : 0);
}

// Parameter counts from the architectures' closed forms, independent of LibTorch's bookkeeping.
TEST(ModelsTest, ParameterCountsMatchTheArchitectures) {
  EXPECT_EQ(parameter_count(*make_model("mlp", {}).value()),
            linear(784, 2048) + linear(2048, 2048) + linear(2048, 10));  // 5,824,522
  EXPECT_EQ(parameter_count(*make_model("cnn", {}).value()),
            conv(1, 32, 5, true) + conv(32, 64, 5, true) + linear(3136, 1024) + linear(1024, 10));
  int64_t resnet = conv(1, 16, 3, false) + 2 * 16 + linear(64, 10);
  for (int64_t stage = 0, in = 16; stage < 3; ++stage) {
    const int64_t out = 16 << stage;
    for (int block = 0; block < 3; ++block) {
      resnet += conv(in, out, 3, false) + conv(out, out, 3, false) + 4 * out;
      if (in != out) resnet += conv(in, out, 1, false) + 2 * out;
      in = out;
    }
  }
  auto resnet20 = make_model("resnet20", {}).value();
  EXPECT_EQ(parameter_count(*resnet20), resnet);  // 272,186
  // Stable, torchvision-style names: compressor state and ResiReduce groups key on them.
  auto named = resnet20->named_parameters();
  for (const char* name : {"conv1.weight", "layer1.0.conv1.weight", "layer3.2.bn2.bias",
                           "layer2.0.shortcut.0.weight", "fc.bias"}) {
    EXPECT_NE(named.find(name), nullptr) << name;
  }
  const int64_t vocab = 65;
  ModelOptions lm;
  lm.vocab_size = vocab;
  const int64_t lstm_layer1 = 4 * 256 * (128 + 256) + 2 * 4 * 256;
  const int64_t lstm_layer2 = 4 * 256 * (256 + 256) + 2 * 4 * 256;
  EXPECT_EQ(parameter_count(*make_model("lstm", lm).value()),
            vocab * 128 + lstm_layer1 + lstm_layer2 + linear(256, vocab));
  const int64_t w = 128;
  const int64_t block =
      2 * w + linear(w, 3 * w) + linear(w, w) + 2 * w + linear(w, 4 * w) + linear(4 * w, w);
  EXPECT_EQ(parameter_count(*make_model("gpt-tiny", lm).value()),
            vocab * w + lm.max_seq_len * w + 4 * block + 2 * w + linear(w, vocab));
}

TEST(ModelsTest, ForwardShapesAndGradientsFlow) {
  torch::manual_seed(1);
  for (const char* name : {"mlp", "cnn", "resnet20"}) {
    auto model = make_model(name, {}).value();
    auto logits = model->forward(torch::randn({3, 1, 28, 28}));
    EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{3, 10})) << name;
    torch::nn::functional::cross_entropy(logits, torch::tensor({1, 2, 3})).backward();
    for (const auto& p : model->parameters()) {
      ASSERT_TRUE(p.grad().defined()) << name;
    }
  }
  ModelOptions lm;
  lm.vocab_size = 30;
  for (const char* name : {"lstm", "gpt-tiny"}) {
    auto model = make_model(name, lm).value();
    auto logits = model->forward(torch::randint(30, {2, 16}, torch::kLong));
    EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{2, 16, 30})) << name;
    EXPECT_EQ(model->task(), ModelTask::kLanguageModel);
  }
}

// A decoder-only LM must not look ahead: changing the last token leaves earlier logits alone.
TEST(ModelsTest, LanguageModelsAreCausal) {
  torch::manual_seed(2);
  ModelOptions lm;
  lm.vocab_size = 20;
  for (const char* name : {"lstm", "gpt-tiny"}) {
    auto model = make_model(name, lm).value();
    auto tokens = torch::randint(20, {1, 12}, torch::kLong);
    auto changed = tokens.clone();
    changed[0][11] = (changed[0][11].item<int64_t>() + 1) % 20;
    torch::NoGradGuard no_grad;
    auto a = model->forward(tokens);
    auto b = model->forward(changed);
    EXPECT_TRUE(torch::allclose(a.slice(1, 0, 11), b.slice(1, 0, 11))) << name;
    EXPECT_FALSE(torch::allclose(a.slice(1, 11, 12), b.slice(1, 11, 12))) << name;
  }
}

TEST(ModelsTest, SameSeedSameWeightsAndBadNamesRejected) {
  torch::manual_seed(5);
  auto a = make_model("cnn", {}).value();
  torch::manual_seed(5);
  auto b = make_model("cnn", {}).value();
  auto pa = a->parameters(), pb = b->parameters();
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(torch::equal(pa[i], pb[i]));
  auto unknown = make_model("resnet50", {});
  ASSERT_FALSE(unknown.is_ok());
  EXPECT_NE(unknown.status().message().find("valid: mlp, cnn, resnet20, lstm, gpt-tiny"),
            std::string::npos);
  EXPECT_FALSE(make_model("lstm", {}).is_ok()) << "a language model needs a vocabulary";
}

}  // namespace
}  // namespace frugal
