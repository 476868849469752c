// The sparse payload format shared by every selecting compressor (top-k, threshold, DGC,
// Gaussian-k, RedSync, SIDCo, random-k under gather):
//
//   [u32 count][count x u32 index, strictly ascending][count x value (f32, f16 or bf16)]
//
// little-endian, no alignment assumed (payloads are packed back to back in fusion buffers).
// Self-describing: the count travels in the payload, so fused buffers need no side table.
// Cost model: 4 + count * (4 + value bytes) bytes on the wire. Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <span>

#include "core/status.h"
#include "core/tensor_view.h"

namespace frugal {

size_t sparse_payload_bytes(int64_t count, DType value_dtype);

// Writes the entries dense[indices[i]] for ascending `indices` into `out`; returns the bytes used.
// REQUIRES: out.size() >= sparse_payload_bytes(indices.size(), value_dtype), value_dtype is
// f32, f16 or bf16, every index < dense.size().
size_t encode_sparse(std::span<const float> dense, std::span<const uint32_t> indices,
                     DType value_dtype, MutableBytes out);

// A decoded view of a payload (pointers into it; values may be unaligned).
struct SparsePayloadView {
  int64_t count = 0;
  const std::byte* indices = nullptr;  // count x u32
  const std::byte* values = nullptr;   // count x value_dtype
  DType value_dtype = DType::kF32;

  uint32_t index(int64_t i) const;
  float value(int64_t i) const;
};

// Validates the header and size against a tensor of `numel` elements; DataLoss otherwise.
// Index bounds and order are checked by the consumers below, as they read.
Result<SparsePayloadView> parse_sparse(ConstBytes payload, DType value_dtype, int64_t numel);

// accum[index] += scale * value for every entry. DataLoss (accum untouched beyond the entries
// before the bad one) when an index is out of range or not ascending.
Status scatter_add_sparse(const SparsePayloadView& payload, std::span<float> accum,
                          float scale = 1.0f);

// target = (0 + the entries of payloads[0] + those of payloads[1] + ...) / divisor, summed in
// payload order and divided as divide_floats does: bit for bit zeroing target, scatter_add_sparse
// of each payload and a division. It works one cache-sized block of target at a time (zero, add
// every payload's entries that fall in it, divide), so target is written once. DataLoss naming
// the payload when an index is out of range or not ascending (target is then unspecified).
Status gather_sparse(std::span<const SparsePayloadView> payloads, std::span<float> target,
                     float divisor);

}  // namespace frugal
