#include "core/status.h"

#include <gtest/gtest.h>

namespace frugal {
namespace {

Result<int> parse_positive(int v) {
  if (v <= 0) return invalid_argument("value " + std::to_string(v) + " must be > 0");
  return v;
}

Result<int> doubled(int v) {
  FRUGAL_ASSIGN_OR_RETURN(int x, parse_positive(v));
  return 2 * x;
}

Status check_twice(int v) {
  FRUGAL_RETURN_IF_ERROR(parse_positive(v).status());
  return Status::ok();
}

TEST(Status, OkAndErrors) {
  EXPECT_TRUE(Status::ok().is_ok());
  EXPECT_EQ(Status::ok().to_string(), "OK");
  Status s = not_found("no file 'x'");
  EXPECT_FALSE(s.is_ok());
  EXPECT_EQ(s.to_string(), "NotFound: no file 'x'");
  EXPECT_EQ(s.with_context("loading").message(), "loading: no file 'x'");
  EXPECT_TRUE(Status::ok().with_context("ignored").is_ok());
}

TEST(Result, PropagatesValuesAndErrors) {
  EXPECT_EQ(doubled(4).value(), 8);
  Result<int> bad = doubled(-1);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(), "value -1 must be > 0");
  EXPECT_TRUE(check_twice(1).is_ok());
  EXPECT_FALSE(check_twice(0).is_ok());
}

TEST(Result, OkStatusIsNotAValue) {
  Result<int> r = Status::ok();
  EXPECT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
}

}  // namespace
}  // namespace frugal
