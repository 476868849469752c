#include "core/timeline.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

namespace frugal {
namespace {

TEST(Timeline, WritesChromeTraceOfSeveralRanks) {
  Timeline rank0(0, true), rank1(1, true);
  rank0.record(phase::kComm, 100, 50, 1, "bucket 0");
  { ScopedTraceEvent event(&rank1, phase::kCompress); }
  std::string path =
      (std::filesystem::temp_directory_path() / "frugal_timeline_test.json").string();
  std::vector<std::string> arrays = {rank0.to_json(), rank1.to_json()};
  ASSERT_TRUE(write_chrome_trace(path, arrays).is_ok());
  std::ifstream in(path);
  nlohmann::json trace = nlohmann::json::parse(in);
  std::filesystem::remove(path);
  int complete = 0;
  for (const auto& e : trace["traceEvents"]) {
    if (e["ph"] != "X") continue;
    ++complete;
    if (e["pid"] == 0) {
      EXPECT_EQ(e["name"], "COMM");
      EXPECT_EQ(e["ts"], 100);
      EXPECT_EQ(e["dur"], 50);
      EXPECT_EQ(e["tid"], 1);
      EXPECT_EQ(e["args"]["detail"], "bucket 0");
    } else {
      EXPECT_EQ(e["name"], "COMPRESS");
      EXPECT_GE(e["dur"].get<int64_t>(), 0);
    }
  }
  EXPECT_EQ(complete, 2);
}

TEST(Timeline, DisabledRecordsNothingAndBoundedDrops) {
  Timeline off(0, false);
  off.record("X", 0, 1);
  EXPECT_TRUE(off.events().empty());
  Timeline bounded(0, true, 2);
  for (int i = 0; i < 5; ++i) bounded.record("X", i, 1);
  EXPECT_EQ(bounded.events().size(), 2u);
  EXPECT_EQ(bounded.dropped(), 3u);
}

}  // namespace
}  // namespace frugal
