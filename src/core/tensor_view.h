// Non-owning views of tensor memory: a pointer, a dtype and a shape. The engine sees gradients
// only through these, so it never depends on LibTorch. A view is as thread-safe as the memory it
// points to; the owner keeps that memory alive while a view is in use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace frugal {

using Shape = std::vector<int64_t>;

inline int64_t shape_numel(const Shape& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
}
std::string shape_to_string(const Shape& shape);  // "[2048, 784]"

using ConstBytes = std::span<const std::byte>;
using MutableBytes = std::span<std::byte>;

template <typename Pointer>
struct BasicView {
  Pointer data = nullptr;
  DType dtype = DType::kF32;
  Shape shape;

  int64_t numel() const { return shape_numel(shape); }
  size_t bytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }

  // REQUIRES: the view's dtype matches T.
  template <typename T>
  auto typed() const {
    using Element = std::conditional_t<std::is_const_v<std::remove_pointer_t<Pointer>>, const T, T>;
    return std::span<Element>(static_cast<Element*>(data), static_cast<size_t>(numel()));
  }
};

using ConstView = BasicView<const void*>;
using MutableView = BasicView<void*>;

// A flat 1-D view of `count` elements.
inline MutableView flat_view(void* data, DType dtype, int64_t count) {
  return {data, dtype, {count}};
}
inline ConstView flat_view(const void* data, DType dtype, int64_t count) {
  return {data, dtype, {count}};
}
inline ConstView as_const(const MutableView& v) { return {v.data, v.dtype, v.shape}; }

inline MutableBytes as_bytes(const MutableView& v) {
  return {static_cast<std::byte*>(v.data), v.bytes()};
}
inline ConstBytes as_bytes(const ConstView& v) {
  return {static_cast<const std::byte*>(v.data), v.bytes()};
}

template <typename T>
MutableBytes bytes_of(std::vector<T>& v) {
  return std::as_writable_bytes(std::span<T>(v));
}
template <typename T>
ConstBytes bytes_of(const std::vector<T>& v) {
  return std::as_bytes(std::span<const T>(v));
}

}  // namespace frugal
