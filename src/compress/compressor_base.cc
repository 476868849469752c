#include "compress/compressor_base.h"

#include <cstring>

#include "core/elementwise.h"

namespace frugal {

std::string_view aggregation_name(Aggregation aggregation) {
  switch (aggregation) {
    case Aggregation::kSum:
      return "sum";
    case Aggregation::kGather:
      return "gather";
    case Aggregation::kTwoPhase:
      return "two-phase";
  }
  return "unknown";
}

ChunkBounds chunk_bounds(int64_t numel, int parts, int chunk) {
  FRUGAL_CHECK(parts > 0 && chunk >= 0 && chunk < parts, "chunk index out of range");
  const int64_t base = numel / parts;
  const int64_t extra = numel % parts;
  const int64_t begin = chunk * base + std::min<int64_t>(chunk, extra);
  return {begin, begin + base + (chunk < extra ? 1 : 0)};
}

Result<size_t> Compressor::next_round(TensorId, int, ConstBytes, MutableBytes, const StepInfo&) {
  return failed_precondition(spec() + " has a single allreduce round");
}

size_t Compressor::chunk_payload_bytes(int64_t) const { return 0; }

Status Compressor::reduce_chunk(TensorId, int, std::span<const ConstBytes>, MutableBytes,
                                const StepInfo&) {
  return failed_precondition(spec() + " is not a two-phase compressor");
}

Status Compressor::decompress_gathered(TensorId id, std::span<const ConstBytes> payloads,
                                       MutableView target, float divisor) {
  std::memset(target.data, 0, target.bytes());
  for (const ConstBytes& payload : payloads) {
    FRUGAL_RETURN_IF_ERROR(decompress_accumulate(id, payload, target));
  }
  divide_floats(static_cast<float*>(target.data), static_cast<size_t>(target.numel()), divisor);
  return Status::ok();
}

Status Compressor::subtract_own_payload(TensorId id, ConstBytes payload, MutableView target) {
  // target - d == -((-target) + d); negation is exact, so this is as exact as the addition.
  auto values = target.typed<float>();
  for (float& v : values) v = -v;
  Status status = decompress_accumulate(id, payload, target);
  for (float& v : values) v = -v;
  return status;
}

Result<TensorId> CompressorBase::register_tensor(const TensorInfo& info) {
  if (info.name.empty()) return invalid_argument(spec() + ": a tensor needs a non-empty name");
  if (ids_.contains(info.name)) {
    return invalid_argument(spec() + ": tensor '" + info.name + "' is registered twice");
  }
  for (int64_t d : info.shape) {
    if (d < 0) {
      return invalid_argument(spec() + ": tensor '" + info.name + "' has a negative dimension " +
                              shape_to_string(info.shape));
    }
  }
  const auto id = static_cast<TensorId>(tensors_.size());
  tensors_.push_back(info);
  ids_.emplace(info.name, id);
  if (Status s = on_register(id, info); !s.is_ok()) {
    tensors_.pop_back();
    ids_.erase(info.name);
    return s;
  }
  return id;
}

Status CompressorBase::check_view(TensorId id, const ConstView& view, const char* what) const {
  if (id < 0 || id >= num_tensors()) {
    return invalid_argument(spec() + ": tensor id " + std::to_string(id) + " is not registered");
  }
  if (view.dtype != DType::kF32) {
    return invalid_argument(spec() + ": " + what + " of tensor '" + tensor(id).name + "' is " +
                            std::string(dtype_name(view.dtype)) + "; compressors take f32");
  }
  if (view.numel() != numel(id)) {
    return invalid_argument(spec() + ": " + what + " of tensor '" + tensor(id).name + "' has " +
                            std::to_string(view.numel()) + " elements; registered shape " +
                            shape_to_string(tensor(id).shape) + " has " +
                            std::to_string(numel(id)));
  }
  return Status::ok();
}

Status CompressorBase::non_finite_error(TensorId id) const {
  return invalid_argument(spec() + ": gradient of tensor '" + tensor(id).name +
                          "' has a non-finite value (NaN or Inf); lower the learning rate or "
                          "enable loss scaling checks");
}

Status CompressorBase::corrupt_payload(TensorId id, const std::string& detail) const {
  return data_loss(spec() + ": payload of tensor '" + tensor(id).name + "' is corrupt: " + detail);
}

Status CompressorBase::check_payload_size(TensorId id, ConstBytes payload, size_t expected) const {
  if (payload.size() == expected) return Status::ok();
  return corrupt_payload(
      id, std::to_string(payload.size()) + " bytes; expected " + std::to_string(expected));
}

Status CompressorDecorator::on_register(TensorId id, const TensorInfo& info) {
  FRUGAL_ASSIGN_OR_RETURN(TensorId inner_id, inner_->register_tensor(info));
  FRUGAL_CHECK(inner_id == id, "decorator and inner compressor disagree on tensor ids");
  return Status::ok();
}

std::string state_key(const std::string& tensor_name, const std::string& field) {
  return tensor_name + ":" + field;
}

void save_f32_state(StateDict& state, const std::string& key, const Shape& shape,
                    const std::vector<float>& values) {
  StateTensor& entry = state[key];
  entry.dtype = DType::kF32;
  entry.shape = shape;
  entry.data.resize(values.size() * sizeof(float));
  if (!values.empty()) std::memcpy(entry.data.data(), values.data(), entry.data.size());
}

Result<bool> load_f32_state(const StateDict& state, const std::string& key, const Shape& shape,
                            std::vector<float>& values) {
  auto it = state.find(key);
  if (it == state.end()) return false;
  const StateTensor& entry = it->second;
  const auto n = static_cast<size_t>(shape_numel(shape));
  if (entry.dtype != DType::kF32 || entry.shape != shape || entry.data.size() != n * 4) {
    return data_loss("saved compressor state '" + key + "' is " +
                     std::string(dtype_name(entry.dtype)) + " " + shape_to_string(entry.shape) +
                     " (" + std::to_string(entry.data.size()) + " bytes); expected f32 " +
                     shape_to_string(shape));
  }
  values.resize(n);
  if (n > 0) std::memcpy(values.data(), entry.data.data(), entry.data.size());
  return true;
}

}  // namespace frugal
