#include "torch/lr_schedule.h"

#include <gtest/gtest.h>

#include <cmath>

namespace frugal {
namespace {

TEST(LrScheduleTest, WarmupRampsLinearlyThenCosineReachesTheFloor) {
  LrSchedule s{.kind = "cosine", .warmup_steps = 4, .min_lr_ratio = 0.1};
  ASSERT_TRUE(validate(s).is_ok());
  EXPECT_DOUBLE_EQ(learning_rate_at(s, 1.0, 0, 104), 0.25);
  EXPECT_DOUBLE_EQ(learning_rate_at(s, 1.0, 3, 104), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate_at(s, 1.0, 4, 104), 1.0);  // first step after warm-up
  // Halfway through the decay, cos = 0: base * (0.1 + 0.9 * 0.5).
  EXPECT_NEAR(learning_rate_at(s, 1.0, 4 + 99 / 2.0, 104), 0.55, 0.01);
  EXPECT_DOUBLE_EQ(learning_rate_at(s, 1.0, 103, 104), 0.1);  // last step
  for (int64_t step = 5; step < 104; ++step) {
    EXPECT_LT(learning_rate_at(s, 1.0, step, 104), learning_rate_at(s, 1.0, step - 1, 104));
  }
}

TEST(LrScheduleTest, StepDecayAndConstant) {
  LrSchedule s{.kind = "step", .warmup_steps = 0, .step_size = 10, .gamma = 0.5};
  ASSERT_TRUE(validate(s).is_ok());
  EXPECT_DOUBLE_EQ(learning_rate_at(s, 0.8, 9, 100), 0.8);
  EXPECT_DOUBLE_EQ(learning_rate_at(s, 0.8, 10, 100), 0.4);
  EXPECT_DOUBLE_EQ(learning_rate_at(s, 0.8, 35, 100), 0.1);
  LrSchedule constant{.kind = "constant"};
  EXPECT_DOUBLE_EQ(learning_rate_at(constant, 0.3, 77, 100), 0.3);
}

TEST(LrScheduleTest, RejectsBadSettingsNamingTheFlag) {
  EXPECT_NE(validate({.kind = "linear"}).message().find("constant, cosine, step"),
            std::string::npos);
  EXPECT_NE(validate({.kind = "step"}).message().find("--lr-step-size"), std::string::npos);
  EXPECT_NE(validate({.warmup_steps = -1}).message().find("--warmup-steps"), std::string::npos);
  EXPECT_NE(validate({.min_lr_ratio = 2}).message().find("--min-lr-ratio"), std::string::npos);
  EXPECT_FALSE(validate({.kind = "step", .step_size = 5, .gamma = 0}).is_ok());
}

}  // namespace
}  // namespace frugal
