#include "core/metrics.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace frugal {
namespace {

TEST(MetricsSink, AppendsOneJsonObjectPerLine) {
  std::string path =
      (std::filesystem::temp_directory_path() / "frugal_metrics_test.jsonl").string();
  std::filesystem::remove(path);
  {
    auto sink = MetricsSink::open(path);
    ASSERT_TRUE(sink.is_ok());
    ASSERT_TRUE(sink.value()->write({{"step", 1}, {"loss", 2.5}}).is_ok());
    ASSERT_TRUE(sink.value()->write({{"step", 2}, {"loss", 1.5}}).is_ok());
  }
  std::ifstream in(path);
  std::string line;
  std::vector<nlohmann::json> records;
  while (std::getline(in, line)) records.push_back(nlohmann::json::parse(line));
  std::filesystem::remove(path);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[1]["step"], 2);
  EXPECT_EQ(records[1]["loss"], 1.5);
}

TEST(MetricsSink, TruncateModeStartsAFreshFileAndAppendKeepsIt) {
  std::string path =
      (std::filesystem::temp_directory_path() / "frugal_metrics_modes.jsonl").string();
  std::ofstream(path) << "{\"old\":1}\n";
  auto count_lines = [&] {
    std::ifstream in(path);
    std::string line;
    int lines = 0;
    while (std::getline(in, line)) ++lines;
    return lines;
  };
  ASSERT_TRUE(MetricsSink::open(path).value()->write({{"step", 1}}).is_ok());
  EXPECT_EQ(count_lines(), 2);
  ASSERT_TRUE(
      MetricsSink::open(path, MetricsSink::Mode::kTruncate).value()->write({{"step", 2}}).is_ok());
  EXPECT_EQ(count_lines(), 1);
  std::filesystem::remove(path);
}

TEST(MetricsSink, UnwritablePathIsAClearError) {
  auto sink = MetricsSink::open("/nonexistent-dir/metrics.jsonl");
  ASSERT_FALSE(sink.is_ok());
  EXPECT_NE(sink.status().message().find("/nonexistent-dir/metrics.jsonl"), std::string::npos);
}

}  // namespace
}  // namespace frugal
