#include "compress/spec.h"

#include <gtest/gtest.h>

namespace frugal {
namespace {

TEST(SpecTest, ParsesNestedSpecsWithParameters) {
  auto node = parse_spec("resireduce(ef(topk:density=0.01,min=3)):mode=mean");
  ASSERT_TRUE(node.is_ok()) << node.status().to_string();
  EXPECT_EQ(node->name, "resireduce");
  ASSERT_EQ(node->params.size(), 1u);
  EXPECT_EQ(node->params[0], std::make_pair(std::string("mode"), std::string("mean")));
  ASSERT_NE(node->inner, nullptr);
  EXPECT_EQ(node->inner->name, "ef");
  ASSERT_NE(node->inner->inner, nullptr);
  EXPECT_EQ(node->inner->inner->name, "topk");
  ASSERT_EQ(node->inner->inner->params.size(), 2u);
  EXPECT_EQ(node->inner->inner->params[1].second, "3");
}

TEST(SpecTest, RejectsMalformedSpecsWithPosition) {
  for (const char* bad : {"", "topk:", "topk:density", "topk:density=", "ef(topk", "ef()", "Topk",
                          "topk:density=0.1,density=0.2", "topk)x", "topk:=3"}) {
    auto node = parse_spec(bad);
    ASSERT_FALSE(node.is_ok()) << bad;
    EXPECT_EQ(node.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(node.status().message().find("at character"), std::string::npos);
  }
}

TEST(SpecTest, ParamReaderChecksRanges) {
  ParamReader reader("topk", {{"density", "0"}, {"k", "12"}, {"flag", "yes"}, {"mode", "x"}});
  auto density = reader.real("density", 0.01, 0.0, 1.0, /*min_exclusive=*/true);
  ASSERT_FALSE(density.is_ok());
  EXPECT_NE(density.status().message().find("0 < density <= 1"), std::string::npos)
      << density.status().message();
  EXPECT_EQ(reader.integer("k", 1, 1, 100).value(), 12);
  EXPECT_FALSE(reader.integer("k", 1, 1, 10).is_ok());
  EXPECT_FALSE(reader.boolean("flag", true).is_ok());
  EXPECT_FALSE(reader.choice("mode", "a", {"a", "b"}).is_ok());
  EXPECT_EQ(reader.real("absent", 0.5, 0, 1).value(), 0.5);
}

TEST(SpecTest, FormatsParametersCompactly) {
  EXPECT_EQ(format_param(0.01), "0.01");
  EXPECT_EQ(format_param(4), "4");
  EXPECT_EQ(format_param(0.001), "0.001");
}

}  // namespace
}  // namespace frugal
