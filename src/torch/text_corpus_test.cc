#include "torch/text_corpus.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include "torch/synthetic_images.h"

namespace frugal {
namespace {

namespace fs = std::filesystem;

std::string write_file(const std::string& name, const std::string& text) {
  const fs::path path = fs::temp_directory_path() / ("frugal_text_" + name);
  std::ofstream(path, std::ios::binary) << text;
  return path.string();
}

TEST(TextCorpusTest, TokensMapBackToTheTextAndSplitAtTheFraction) {
  std::string text;
  for (int i = 0; i < 200; ++i) text += "the quick brown fox " + std::to_string(i % 7) + "\n";
  const std::string path = write_file("ok.txt", text);
  auto corpus = load_text_corpus(path, 16, 0.25);
  ASSERT_TRUE(corpus.is_ok()) << corpus.status().message();
  EXPECT_EQ(corpus->source, path);
  EXPECT_TRUE(std::is_sorted(corpus->vocab.begin(), corpus->vocab.end()));
  EXPECT_EQ(corpus->vocab_size(), 24);  // 15 letters, space, newline, digits 0-6
  EXPECT_EQ(corpus->test.size(), text.size() / 4);
  std::string decoded;
  for (uint8_t t : corpus->train) decoded.push_back(static_cast<char>(corpus->vocab[t]));
  for (uint8_t t : corpus->test) decoded.push_back(static_cast<char>(corpus->vocab[t]));
  EXPECT_EQ(decoded, text);
  EXPECT_EQ(sequences_in(corpus->test, 16), (static_cast<int64_t>(text.size() / 4) - 1) / 16);
  fs::remove(path);
}

TEST(TextCorpusTest, RejectsMissingShortAndSingleSymbolFilesByName) {
  auto missing = load_text_corpus("/nonexistent/corpus.txt", 16);
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/corpus.txt"), std::string::npos);

  const std::string short_path = write_file("short.txt", "abcdefghij");
  auto too_short = load_text_corpus(short_path, 16);
  ASSERT_FALSE(too_short.is_ok());
  EXPECT_EQ(too_short.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(too_short.status().message().find("--seq-len"), std::string::npos);

  const std::string same_path = write_file("same.txt", std::string(10000, 'a'));
  auto single = load_text_corpus(same_path, 16);
  ASSERT_FALSE(single.is_ok());
  EXPECT_NE(single.status().message().find("distinct"), std::string::npos);
  fs::remove(short_path);
  fs::remove(same_path);
}

TEST(TextCorpusTest, SyntheticTextIsDeterministicAndPredictable) {
  const auto a = make_synthetic_text(20000, 2000, 32, 3);
  const auto b = make_synthetic_text(20000, 2000, 32, 3);
  EXPECT_EQ(a.train, b.train);
  EXPECT_NE(a.train, make_synthetic_text(20000, 2000, 32, 4).train);
  EXPECT_EQ(a.vocab_size(), 32);
  ASSERT_EQ(a.test.size(), 2000u);
  // Given the previous symbol, the next one has at most 3 values: the conditional entropy is
  // far below the log2(32) = 5 bits of uniform text.
  std::map<int, std::map<int, int>> counts;
  for (size_t i = 1; i < a.train.size(); ++i) ++counts[a.train[i - 1]][a.train[i]];
  for (const auto& [context, next] : counts) EXPECT_LE(next.size(), 3u);
  for (uint8_t t : a.train) EXPECT_LT(t, 32);
}

TEST(SyntheticImagesTest, DeterministicLabelledAndClassStructured) {
  const auto train = make_synthetic_images(2000, 9, 0);
  const auto test = make_synthetic_images(500, 9, 1);
  EXPECT_EQ(train.images, make_synthetic_images(2000, 9, 0).images);
  EXPECT_NE(train.labels, make_synthetic_images(2000, 10, 0).labels);
  ASSERT_EQ(train.images.size(), 2000u * 784);
  for (uint8_t label : train.labels) EXPECT_LT(label, 10);
  // A nearest-class-mean classifier fitted on train classifies test almost perfectly: the
  // splits share their class structure.
  std::vector<double> mean(10 * 784);
  std::vector<int> count(10);
  for (int64_t i = 0; i < train.count; ++i) {
    ++count[train.labels[i]];
    for (int p = 0; p < 784; ++p) mean[train.labels[i] * 784 + p] += train.images[i * 784 + p];
  }
  for (int c = 0; c < 10; ++c) {
    for (int p = 0; p < 784; ++p) mean[c * 784 + p] /= std::max(count[c], 1);
  }
  int correct = 0;
  for (int64_t i = 0; i < test.count; ++i) {
    int best = 0;
    double best_distance = INFINITY;
    for (int c = 0; c < 10; ++c) {
      double d = 0;
      for (int p = 0; p < 784; ++p) {
        d += std::pow(test.images[i * 784 + p] - mean[c * 784 + p], 2);
      }
      if (d < best_distance) best_distance = d, best = c;
    }
    correct += best == test.labels[i];
  }
  EXPECT_GE(correct, 490);
}

}  // namespace
}  // namespace frugal
