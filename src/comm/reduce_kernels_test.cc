#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "comm/communicator.h"

namespace frugal {
namespace {

TEST(ReduceKernels, F32SumMaxMinMatchScalarReference) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-100, 100);
  const size_t n = 1000;
  std::vector<float> a(n), b(n), out(n);
  for (size_t i = 0; i < n; ++i) {
    a[i] = dist(rng);
    b[i] = dist(rng);
  }
  reduce_elements(out.data(), a.data(), b.data(), n, DType::kF32, ReduceOp::kSum);
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(out[i], a[i] + b[i]);
  reduce_elements(out.data(), a.data(), b.data(), n, DType::kF32, ReduceOp::kMax);
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(out[i], std::max(a[i], b[i]));
  reduce_elements(a.data(), a.data(), b.data(), n, DType::kF32, ReduceOp::kMin);  // aliasing
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(a[i], std::min(out[i] == b[i] ? a[i] : a[i], b[i]));
}

TEST(ReduceKernels, HalfSumRoundsOnceFromF32) {
  // Odd length exercises the blocked widening's tail.
  const size_t n = 517;
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    auto to = dtype == DType::kF16 ? f32_to_f16 : f32_to_bf16;
    auto from = dtype == DType::kF16 ? f16_to_f32 : bf16_to_f32;
    std::vector<uint16_t> a(n), b(n), out(n);
    for (size_t i = 0; i < n; ++i) {
      a[i] = to(0.01f * static_cast<float>(i) - 1.3f);
      b[i] = to(0.37f + 0.002f * static_cast<float>(i));
    }
    reduce_elements(out.data(), a.data(), b.data(), n, dtype, ReduceOp::kSum);
    for (size_t i = 0; i < n; ++i) {
      EXPECT_EQ(out[i], to(from(a[i]) + from(b[i]))) << dtype_name(dtype) << " element " << i;
    }
  }
}

TEST(ReduceKernels, ScaleForAverage) {
  std::vector<double> v = {3.0, -6.0, 9.0};
  scale_in_place(v.data(), v.size(), DType::kF64, 3.0);
  EXPECT_DOUBLE_EQ(v[0], 1.0);
  EXPECT_DOUBLE_EQ(v[1], -2.0);
  EXPECT_DOUBLE_EQ(v[2], 3.0);
}

TEST(ReduceKernels, IntegerSum) {
  std::vector<int64_t> a = {1, -5, INT64_C(1) << 40}, b = {2, 5, 1};
  reduce_elements(a.data(), a.data(), b.data(), 3, DType::kI64, ReduceOp::kSum);
  EXPECT_EQ(a, (std::vector<int64_t>{3, 0, (INT64_C(1) << 40) + 1}));
}

}  // namespace
}  // namespace frugal
