#include "bench/model_shapes.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

namespace frugal::bench {
namespace {

TEST(ModelShapesTest, ParsesNamesDimsCommentsAndBlankLines) {
  auto parsed = parse_model_shapes(
      "# header\n\nfc.bias 10   # trailing comment\nfc.weight\t10 784\r\n  conv 8 3 3 3\n", "m");
  ASSERT_TRUE(parsed.is_ok()) << parsed.status().message();
  const ModelShapes& m = parsed.value();
  ASSERT_EQ(m.params.size(), 3u);
  EXPECT_EQ(m.params[0].name, "fc.bias");
  EXPECT_EQ(m.params[0].shape, (Shape{10}));
  EXPECT_EQ(m.params[1].name, "fc.weight");
  EXPECT_EQ(m.params[1].shape, (Shape{10, 784}));
  EXPECT_EQ(m.params[2].shape, (Shape{8, 3, 3, 3}));
  EXPECT_EQ(m.numel(), 10 + 7840 + 216);
}

void expect_error(std::string_view text, const std::string& fragment) {
  auto parsed = parse_model_shapes(text, "bad.txt");
  ASSERT_FALSE(parsed.is_ok()) << text;
  EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(parsed.status().message().find(fragment), std::string::npos)
      << parsed.status().message();
}

TEST(ModelShapesTest, MalformedLinesNameFileAndLine) {
  expect_error("a 1\nb\n", "bad.txt:2: tensor 'b' has no dimensions");
  expect_error("# c\na 1 x\n", "bad.txt:2: dimension 1 of 'a' is 'x'");
  expect_error("a 0\n", "bad.txt:1: dimension 0 of 'a' is '0'");
  expect_error("a -3\n", "bad.txt:1:");
  expect_error("a 2.5\n", "bad.txt:1:");
  expect_error("a 1e3\n", "bad.txt:1:");
  expect_error("a 4294967296 4294967296\n", "bad.txt:1: tensor 'a' has more than 2^63");
  expect_error("a 1\nb 2\na 3\n", "'a' is listed twice");
  expect_error("# nothing\n\n", "bad.txt: lists no tensors");
}

TEST(ModelShapesTest, LoadsByPathAndReportsMissingFiles) {
  const std::string path = ::testing::TempDir() + "/model_shapes_test_model.txt";
  {
    std::ofstream out(path);
    out << "w 3 4\nb 3\n";
  }
  auto loaded = load_model_shapes(path);
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().message();
  EXPECT_EQ(loaded->model, path);
  EXPECT_EQ(loaded->numel(), 15);
  std::remove(path.c_str());

  auto missing = load_model_shapes_file(path);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(path), std::string::npos);

  auto unknown = load_model_shapes("no-such-model");
  EXPECT_EQ(unknown.status().code(), StatusCode::kNotFound);
  EXPECT_NE(unknown.status().message().find("resnet50"), std::string::npos)
      << unknown.status().message();
}

struct Published {
  const char* model;
  size_t tensors;
  int64_t parameters;  // the model's published parameter count
  const char* first;   // first in backward order: the last registered parameter
  const char* last;    // last in backward order: the first registered parameter
};

class ShippedModelTest : public ::testing::TestWithParam<Published> {};

TEST_P(ShippedModelTest, MatchesPublishedParameterCount) {
  const Published& want = GetParam();
  auto loaded = load_model_shapes(want.model);
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().message();
  const ModelShapes& m = loaded.value();
  EXPECT_EQ(m.model, want.model);
  EXPECT_EQ(m.numel(), want.parameters);
  EXPECT_EQ(m.params.size(), want.tensors);
  EXPECT_EQ(m.params.front().name, want.first);
  EXPECT_EQ(m.params.back().name, want.last);
}

// References: torchvision's model documentation (ResNet-50 25,557,032; VGG-16 138,357,544) and
// transformers' BertModel("bert-base-uncased").num_parameters() = 109,482,240.
INSTANTIATE_TEST_SUITE_P(
    Shipped, ShippedModelTest,
    ::testing::Values(Published{"resnet50", 161, 25'557'032, "fc.bias", "conv1.weight"},
                      Published{"vgg16", 32, 138'357'544, "classifier.6.bias", "features.0.weight"},
                      Published{"bert-base", 199, 109'482'240, "pooler.dense.bias",
                                "embeddings.word_embeddings.weight"}),
    [](const auto& info) {
      std::string name = info.param.model;
      for (char& c : name) c = c == '-' ? '_' : c;
      return name;
    });

TEST(ModelShapesTest, ShippedModelsAreListed) {
  std::vector<std::string> models = list_models();
  for (const char* name : {"bert-base", "resnet50", "vgg16"}) {
    EXPECT_NE(std::find(models.begin(), models.end(), name), models.end()) << name;
  }
}

}  // namespace
}  // namespace frugal::bench
