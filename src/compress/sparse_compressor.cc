#include "compress/sparse_compressor.h"

#include <algorithm>
#include <cmath>

namespace frugal {

int64_t density_count(double density, int64_t numel) {
  if (numel <= 0) return 0;
  const auto k = static_cast<int64_t>(std::floor(density * static_cast<double>(numel) + 1e-9));
  return std::clamp<int64_t>(k, 1, numel);
}

Status check_sparse_value_dtype(const std::string& name, DType value_dtype) {
  if (value_dtype == DType::kF32 || value_dtype == DType::kF16 || value_dtype == DType::kBF16) {
    return Status::ok();
  }
  return invalid_argument(name + " sends values as f32, f16 or bf16, not " +
                          std::string(dtype_name(value_dtype)));
}

Status SparseCompressor::on_register(TensorId /*id*/, const TensorInfo& info) {
  if (shape_numel(info.shape) > int64_t{UINT32_MAX}) {
    return invalid_argument(spec() + ": tensor '" + info.name + "' has " +
                            std::to_string(shape_numel(info.shape)) +
                            " elements; sparse payloads index at most 2^32 - 1");
  }
  return Status::ok();
}

std::string SparseCompressor::wrap_spec(const std::string& spec) const {
  switch (value_dtype_) {
    case DType::kF16:
      return "fp16(" + spec + ")";
    case DType::kBF16:
      return "bf16(" + spec + ")";
    default:
      return spec;
  }
}

size_t SparseCompressor::encode(TensorId id, const ConstView& grad,
                                std::span<const uint32_t> indices, MutableBytes out) const {
  FRUGAL_CHECK(static_cast<int64_t>(indices.size()) <= max_count(id),
               "sparse selection exceeds max_count");
  return encode_sparse(grad.typed<float>(), indices, value_dtype_, out);
}

Result<SparsePayloadView> SparseCompressor::parse(TensorId id, ConstBytes payload) const {
  auto parsed = parse_sparse(payload, value_dtype_, numel(id));
  if (!parsed.is_ok()) return corrupt_payload(id, parsed.status().message());
  if (parsed->count > max_count(id)) {
    return corrupt_payload(id, std::to_string(parsed->count) + " entries; at most " +
                                   std::to_string(max_count(id)) + " expected");
  }
  return parsed;
}

Status SparseCompressor::accumulate(TensorId id, ConstBytes payload, MutableView accum,
                                    float scale) {
  FRUGAL_RETURN_IF_ERROR(check_view(id, accum, "accumulator"));
  FRUGAL_ASSIGN_OR_RETURN(const SparsePayloadView parsed, parse(id, payload));
  Status status = scatter_add_sparse(parsed, accum.typed<float>(), scale);
  if (!status.is_ok()) return corrupt_payload(id, status.message());
  return Status::ok();
}

Status SparseCompressor::decompress_accumulate(TensorId id, ConstBytes payload, MutableView accum) {
  return accumulate(id, payload, accum, 1.0f);
}

Status SparseCompressor::decompress_gathered(TensorId id, std::span<const ConstBytes> payloads,
                                             MutableView target, float divisor) {
  FRUGAL_RETURN_IF_ERROR(check_view(id, target, "target"));
  std::vector<SparsePayloadView> parsed;
  parsed.reserve(payloads.size());
  for (const ConstBytes& payload : payloads) {
    FRUGAL_ASSIGN_OR_RETURN(const SparsePayloadView view, parse(id, payload));
    parsed.push_back(view);
  }
  Status status = gather_sparse(parsed, target.typed<float>(), divisor);
  if (!status.is_ok()) return corrupt_payload(id, status.message());
  return Status::ok();
}

Status SparseCompressor::subtract_own_payload(TensorId id, ConstBytes payload, MutableView target) {
  // target + (-1) * v rounds exactly like target - v.
  return accumulate(id, payload, target, -1.0f);
}

std::span<uint32_t> SelectionBuffers::indices_of(int64_t count) {
  if (indices.size() < static_cast<size_t>(count)) indices.resize(static_cast<size_t>(count));
  return {indices.data(), static_cast<size_t>(count)};
}

SelectionBuffers& thread_selection_buffers() {
  thread_local SelectionBuffers buffers;
  return buffers;
}

}  // namespace frugal
