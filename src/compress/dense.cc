// Dense compressors: none (f32 as is), fp16 and bf16 (values cast, summed by the allreduce).
// Cost model: 4, 2 and 2 bytes per element through one allreduce. As wrappers, fp16(inner) and
// bf16(inner) build `inner` with its values sent as f16 or bf16.
#include <cstring>

#include "compress/bytes.h"
#include "compress/compressor_base.h"
#include "compress/registry.h"

namespace frugal {
namespace {

// True when the IEEE exponent of `bits` is all ones (Inf or NaN).
inline bool non_finite_bits(uint32_t bits) { return (bits & 0x7F800000u) == 0x7F800000u; }

class DenseCompressor final : public CompressorBase {
 public:
  DenseCompressor(const CompressorContext& context, DType wire_dtype)
      : CompressorBase(context), wire_dtype_(wire_dtype) {}

  std::string spec() const override {
    return wire_dtype_ == DType::kF32 ? "none" : wire_dtype_ == DType::kF16 ? "fp16" : "bf16";
  }
  Aggregation aggregation() const override { return Aggregation::kSum; }
  DType payload_dtype() const override { return wire_dtype_; }
  bool fixed_size() const override { return true; }
  size_t max_compressed_bytes(TensorId id) const override {
    return static_cast<size_t>(numel(id)) * dtype_size(wire_dtype_);
  }

  Result<size_t> compress(TensorId id, ConstView grad, MutableBytes out,
                          const StepInfo& /*step*/) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, grad, "gradient"));
    const auto* in = static_cast<const uint32_t*>(grad.data);
    const size_t n = static_cast<size_t>(numel(id));
    FRUGAL_CHECK(out.size() >= max_compressed_bytes(id), "output buffer too small");
    uint32_t exponent_or = 0;  // all ones in the exponent iff some value is Inf or NaN
    std::byte* p = out.data();
    if (wire_dtype_ == DType::kF32) {
      for (size_t i = 0; i < n; ++i) exponent_or |= non_finite_bits(in[i]) ? 1 : 0;
      if (n > 0) std::memcpy(p, in, n * 4);
    } else {
      const float* values = static_cast<const float*>(grad.data);
      for (size_t i = 0; i < n; ++i) {
        exponent_or |= non_finite_bits(in[i]) ? 1 : 0;
        store(p + 2 * i,
              wire_dtype_ == DType::kF16 ? f32_to_f16(values[i]) : f32_to_bf16(values[i]));
      }
    }
    if (exponent_or != 0) return non_finite_error(id);
    return max_compressed_bytes(id);
  }

  Status decompress_accumulate(TensorId id, ConstBytes payload, MutableView accum) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, accum, "accumulator"));
    FRUGAL_RETURN_IF_ERROR(check_payload_size(id, payload, max_compressed_bytes(id)));
    auto out = accum.typed<float>();
    const std::byte* p = payload.data();
    if (wire_dtype_ == DType::kF32) {
      for (size_t i = 0; i < out.size(); ++i) out[i] += load<float>(p + 4 * i);
    } else if (wire_dtype_ == DType::kF16) {
      for (size_t i = 0; i < out.size(); ++i) out[i] += f16_to_f32(load<uint16_t>(p + 2 * i));
    } else {
      for (size_t i = 0; i < out.size(); ++i) out[i] += bf16_to_f32(load<uint16_t>(p + 2 * i));
    }
    return Status::ok();
  }

 private:
  DType wire_dtype_;
};

CompressorFactory dense_factory(DType wire_dtype) {
  return [wire_dtype](const BuildRequest& request) -> Result<std::unique_ptr<Compressor>> {
    if (request.node.inner) return request.build(*request.node.inner, wire_dtype);
    if (request.value_dtype != DType::kF32) {
      return invalid_argument(request.node.name + " cannot be wrapped in fp16(...) or bf16(...)");
    }
    return std::unique_ptr<Compressor>(new DenseCompressor(request.context, wire_dtype));
  };
}

}  // namespace

std::vector<CompressorEntry> dense_compressor_entries() {
  return {
      {"none",
       "dense f32, summed by allreduce (the baseline)",
       {},
       InnerSpec::kNone,
       {"none"},
       dense_factory(DType::kF32)},
      {"fp16",
       "dense f16, summed by allreduce; fp16(inner) sends inner's values as f16",
       {},
       InnerSpec::kOptional,
       {"fp16", "fp16(topk:density=0.01)"},
       dense_factory(DType::kF16)},
      {"bf16",
       "dense bf16, summed by allreduce; bf16(inner) sends inner's values as bf16",
       {},
       InnerSpec::kOptional,
       {"bf16", "bf16(topk:density=0.01)"},
       dense_factory(DType::kBF16)},
  };
}

}  // namespace frugal
