// SparseCompressor: the plumbing shared by the selecting compressors whose payloads use the sparse
// format of sparse_payload.h (topk, threshold, dgc, gaussiank, redsync, sidco): gather
// aggregation, values sent as f32/f16/bf16, validated decoding, the sparse error-feedback
// subtraction, canonical spec wrapping and per-thread selection buffers. Thread-safety as in
// compressor.h.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "compress/compressor_base.h"
#include "compress/select.h"
#include "compress/sparse_payload.h"

namespace frugal {

// k = max(1, floor(density * n)) for n > 0 (GRACE's rule), 0 for an empty tensor. The 1e-9 guard
// keeps products that are integers in exact arithmetic (0.07 * 100) from flooring one below.
int64_t density_count(double density, int64_t numel);

// Per-thread buffers for the selection kernels: calls for different tensors run concurrently on
// different threads, and one thread runs one compress at a time. Grown on demand, never shrunk, so
// a thread holds about 4 bytes per element of the largest tensor it selected from.
struct SelectionBuffers {
  TopkScratch topk;
  std::vector<uint32_t> indices;
  // `indices` grown to at least `count`, as a span of that size.
  std::span<uint32_t> indices_of(int64_t count);
};
SelectionBuffers& thread_selection_buffers();

class SparseCompressor : public CompressorBase {
 public:
  Aggregation aggregation() const override { return Aggregation::kGather; }
  std::optional<DType> sparse_value_dtype() const override { return value_dtype_; }
  size_t max_compressed_bytes(TensorId id) const override {
    return sparse_payload_bytes(max_count(id), value_dtype_);
  }
  Status decompress_accumulate(TensorId id, ConstBytes payload, MutableView accum) override;
  // One pass over target, a cache-sized block at a time (gather_sparse).
  Status decompress_gathered(TensorId id, std::span<const ConstBytes> payloads, MutableView target,
                             float divisor) override;
  // Sparse: touches only the payload's entries (target[i] -= value, exact as a subtraction).
  Status subtract_own_payload(TensorId id, ConstBytes payload, MutableView target) override;

 protected:
  SparseCompressor(const CompressorContext& context, DType value_dtype)
      : CompressorBase(context), value_dtype_(value_dtype) {}

  // Rejects tensors of 2^32 elements or more (indices are u32). Overrides call this first.
  Status on_register(TensorId id, const TensorInfo& info) override;

  // The largest entry count compress() can produce for tensor `id`.
  virtual int64_t max_count(TensorId id) const = 0;

  DType value_dtype() const { return value_dtype_; }
  // "fp16(<spec>)" / "bf16(<spec>)" when values travel as f16/bf16, so the spec rebuilds itself.
  std::string wrap_spec(const std::string& spec) const;
  // Encodes grad[indices] (ascending) into out; returns the bytes used.
  size_t encode(TensorId id, const ConstView& grad, std::span<const uint32_t> indices,
                MutableBytes out) const;

 private:
  Status accumulate(TensorId id, ConstBytes payload, MutableView accum, float scale);
  // A payload's header and size, checked against the tensor; DataLoss naming it otherwise.
  Result<SparsePayloadView> parse(TensorId id, ConstBytes payload) const;

  DType value_dtype_;
};

// Builds the registry factory argument check shared by the sparse families: values may be f32,
// f16 or bf16 (any other wrapper dtype is rejected).
Status check_sparse_value_dtype(const std::string& name, DType value_dtype);

}  // namespace frugal
