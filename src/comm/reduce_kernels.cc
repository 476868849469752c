// Element-wise reduction kernels shared by every backend. Written by hand because they are the
// inner loop of Gloo's and MPI's reductions for Frugal's dtypes (Gloo and MPI have no f16/bf16
// sum with f32 arithmetic): simple loops the compiler vectorizes.
#include <algorithm>
#include <cstdint>

#include "comm/communicator.h"

namespace frugal {
namespace {

template <typename T, typename Op>
void apply(T* out, const T* a, const T* b, size_t count, Op op) {
  for (size_t i = 0; i < count; ++i) out[i] = op(a[i], b[i]);
}

template <typename T>
void reduce_typed(T* out, const T* a, const T* b, size_t count, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      apply(out, a, b, count, [](T x, T y) { return static_cast<T>(x + y); });
      return;
    case ReduceOp::kMax:
      apply(out, a, b, count, [](T x, T y) { return std::max(x, y); });
      return;
    case ReduceOp::kMin:
      apply(out, a, b, count, [](T x, T y) { return std::min(x, y); });
      return;
  }
}

// 16-bit floats: widen to f32, combine, round once.
template <float (*ToF32)(uint16_t), uint16_t (*FromF32)(float)>
void reduce_half(uint16_t* out, const uint16_t* a, const uint16_t* b, size_t count, ReduceOp op) {
  constexpr size_t kBlock = 256;  // widen in blocks so the f32 loop vectorizes
  float fa[kBlock];
  float fb[kBlock];
  for (size_t base = 0; base < count; base += kBlock) {
    size_t n = std::min(kBlock, count - base);
    for (size_t i = 0; i < n; ++i) {
      fa[i] = ToF32(a[base + i]);
      fb[i] = ToF32(b[base + i]);
    }
    reduce_typed(fa, fa, fb, n, op);
    for (size_t i = 0; i < n; ++i) out[base + i] = FromF32(fa[i]);
  }
}

template <typename T>
void scale_typed(T* buf, size_t count, double divisor) {
  const T inv = static_cast<T>(1.0 / divisor);
  for (size_t i = 0; i < count; ++i) buf[i] *= inv;
}

}  // namespace

void reduce_elements(void* out, const void* a, const void* b, size_t count, DType dtype,
                     ReduceOp op) {
  switch (dtype) {
    case DType::kF32:
      return reduce_typed(static_cast<float*>(out), static_cast<const float*>(a),
                          static_cast<const float*>(b), count, op);
    case DType::kF64:
      return reduce_typed(static_cast<double*>(out), static_cast<const double*>(a),
                          static_cast<const double*>(b), count, op);
    case DType::kI32:
      return reduce_typed(static_cast<int32_t*>(out), static_cast<const int32_t*>(a),
                          static_cast<const int32_t*>(b), count, op);
    case DType::kI64:
      return reduce_typed(static_cast<int64_t*>(out), static_cast<const int64_t*>(a),
                          static_cast<const int64_t*>(b), count, op);
    case DType::kU8:
      return reduce_typed(static_cast<uint8_t*>(out), static_cast<const uint8_t*>(a),
                          static_cast<const uint8_t*>(b), count, op);
    case DType::kF16:
      return reduce_half<f16_to_f32, f32_to_f16>(static_cast<uint16_t*>(out),
                                                 static_cast<const uint16_t*>(a),
                                                 static_cast<const uint16_t*>(b), count, op);
    case DType::kBF16:
      return reduce_half<bf16_to_f32, f32_to_bf16>(static_cast<uint16_t*>(out),
                                                   static_cast<const uint16_t*>(a),
                                                   static_cast<const uint16_t*>(b), count, op);
  }
}

void scale_in_place(void* buf, size_t count, DType dtype, double divisor) {
  switch (dtype) {
    case DType::kF32:
      return scale_typed(static_cast<float*>(buf), count, divisor);
    case DType::kF64:
      return scale_typed(static_cast<double*>(buf), count, divisor);
    case DType::kF16:
    case DType::kBF16: {
      auto* h = static_cast<uint16_t*>(buf);
      const float inv = static_cast<float>(1.0 / divisor);
      for (size_t i = 0; i < count; ++i) {
        h[i] = dtype == DType::kF16 ? f32_to_f16(f16_to_f32(h[i]) * inv)
                                    : f32_to_bf16(bf16_to_f32(h[i]) * inv);
      }
      return;
    }
    default:
      return;  // integer averages are rejected by check_allreduce_args
  }
}

}  // namespace frugal
