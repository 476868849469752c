// CompressorBase: the bookkeeping every compressor shares (the tensor table, argument checks,
// state import/export helpers), so a compressor implements only its algorithm.
// CompressorDecorator: the same for memories that wrap an inner compressor (ef, momentum,
// resireduce). Thread-safety as in compressor.h.
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "compress/compressor.h"

namespace frugal {

class CompressorBase : public Compressor {
 public:
  Result<TensorId> register_tensor(const TensorInfo& info) final;
  const TensorInfo& tensor(TensorId id) const final { return tensors_[static_cast<size_t>(id)]; }
  int num_tensors() const final { return static_cast<int>(tensors_.size()); }

  StateDict export_state() const override { return {}; }
  Status import_state(const StateDict& /*state*/) override { return Status::ok(); }

 protected:
  explicit CompressorBase(const CompressorContext& context) : context_(context) {}

  // Called once per tensor after the base recorded it: allocate per-tensor state here, or reject
  // a shape the compressor cannot handle (the base then forgets the tensor).
  virtual Status on_register(TensorId /*id*/, const TensorInfo& /*info*/) { return Status::ok(); }

  const CompressorContext& context() const { return context_; }
  int64_t numel(TensorId id) const { return shape_numel(tensor(id).shape); }

  // InvalidArgument unless `view` is f32 with the registered tensor's element count.
  Status check_view(TensorId id, const ConstView& view, const char* what) const;
  Status check_view(TensorId id, const MutableView& view, const char* what) const {
    return check_view(id, as_const(view), what);
  }
  // "gradient of tensor 'fc1.weight' has a non-finite value (NaN or Inf); ..."
  Status non_finite_error(TensorId id) const;
  // "payload of tensor 'fc1.weight' is corrupt: <detail>"
  Status corrupt_payload(TensorId id, const std::string& detail) const;
  // corrupt_payload unless `payload` is exactly `expected` bytes (fixed-size formats).
  Status check_payload_size(TensorId id, ConstBytes payload, size_t expected) const;

 private:
  CompressorContext context_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, TensorId> ids_;
};

// A memory wrapping an inner compressor: it registers every tensor with the inner one too (the
// ids coincide) and forwards what it does not change.
class CompressorDecorator : public CompressorBase {
 public:
  Aggregation aggregation() const override { return inner_->aggregation(); }
  DType payload_dtype() const override { return inner_->payload_dtype(); }
  size_t max_compressed_bytes(TensorId id) const override {
    return inner_->max_compressed_bytes(id);
  }
  bool fixed_size() const override { return inner_->fixed_size(); }
  Status decompress_accumulate(TensorId id, ConstBytes payload, MutableView accum) override {
    return inner_->decompress_accumulate(id, payload, accum);
  }
  Status decompress_gathered(TensorId id, std::span<const ConstBytes> payloads, MutableView target,
                             float divisor) override {
    return inner_->decompress_gathered(id, payloads, target, divisor);
  }
  Status subtract_own_payload(TensorId id, ConstBytes payload, MutableView target) override {
    return inner_->subtract_own_payload(id, payload, target);
  }
  std::optional<DType> sparse_value_dtype() const override { return inner_->sparse_value_dtype(); }
  int rounds() const override { return inner_->rounds(); }
  Result<size_t> next_round(TensorId id, int round, ConstBytes reduced, MutableBytes out,
                            const StepInfo& step) override {
    return inner_->next_round(id, round, reduced, out, step);
  }
  size_t chunk_payload_bytes(int64_t chunk_numel) const override {
    return inner_->chunk_payload_bytes(chunk_numel);
  }
  Status reduce_chunk(TensorId id, int chunk, std::span<const ConstBytes> payloads,
                      MutableBytes out, const StepInfo& step) override {
    return inner_->reduce_chunk(id, chunk, payloads, out, step);
  }
  // Derived classes add their own entries to the inner compressor's.
  StateDict export_state() const override { return inner_->export_state(); }
  Status import_state(const StateDict& state) override { return inner_->import_state(state); }
  CompressorStats stats() const override { return inner_->stats(); }

 protected:
  CompressorDecorator(const CompressorContext& context, std::unique_ptr<Compressor> inner)
      : CompressorBase(context), inner_(std::move(inner)) {}
  // Registers the tensor with the inner compressor; derived classes call this first.
  Status on_register(TensorId id, const TensorInfo& info) override;

  Compressor& inner() { return *inner_; }
  const Compressor& inner() const { return *inner_; }

 private:
  std::unique_ptr<Compressor> inner_;
};

// State helpers: f32 vectors in and out of a StateDict under "<tensor>:<field>".
std::string state_key(const std::string& tensor_name, const std::string& field);
void save_f32_state(StateDict& state, const std::string& key, const Shape& shape,
                    const std::vector<float>& values);
// Copies the saved values into `values` (sized to shape_numel(shape)) and returns true; returns
// false when `key` is absent (the caller resets the state); DataLoss when dtype or shape differ.
Result<bool> load_f32_state(const StateDict& state, const std::string& key, const Shape& shape,
                            std::vector<float>& values);

}  // namespace frugal
