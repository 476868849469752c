// Exact top-k and fixed-threshold sparsification (topk, threshold). Payload: the sparse format of
// sparse_payload.h, exchanged by allgather(v).
//
// Cost model (bytes on the wire per rank, values of v bytes: 4 for f32, 2 under fp16/bf16):
//   topk:density=D       4 + k * (4 + v), k = max(1, floor(D * n)); fixed for a shape.
//   threshold:value=T    4 + c * (4 + v), c = #{|x| >= T}; up to every element (4 + n * (4 + v)).
#include <cmath>
#include <limits>

#include "compress/registry.h"
#include "compress/sparse_compressor.h"

namespace frugal {
namespace {

// topk: the k largest magnitudes of each tensor, exactly (ties to the lower index). Stateless.
class TopkCompressor final : public SparseCompressor {
 public:
  TopkCompressor(const CompressorContext& context, DType value_dtype, double density)
      : SparseCompressor(context, value_dtype), density_(density) {}

  std::string spec() const override { return wrap_spec("topk:density=" + format_param(density_)); }
  bool fixed_size() const override { return true; }

  Result<size_t> compress(TensorId id, ConstView grad, MutableBytes out,
                          const StepInfo& /*step*/) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, grad, "gradient"));
    FRUGAL_CHECK(out.size() >= max_compressed_bytes(id), "output buffer too small");
    const int64_t k = max_count(id);
    SelectionBuffers& buffers = thread_selection_buffers();
    std::span<uint32_t> indices = buffers.indices_of(k);
    if (!select_topk(grad.typed<float>(), k, indices, buffers.topk)) return non_finite_error(id);
    return encode(id, grad, indices, out);
  }

 protected:
  int64_t max_count(TensorId id) const override { return density_count(density_, numel(id)); }

 private:
  double density_;
};

// threshold: every element with |x| >= value (Strom, 2015). Variable size, stateless.
class ThresholdCompressor final : public SparseCompressor {
 public:
  ThresholdCompressor(const CompressorContext& context, DType value_dtype, double value)
      : SparseCompressor(context, value_dtype), value_(value) {}

  std::string spec() const override { return wrap_spec("threshold:value=" + format_param(value_)); }
  bool fixed_size() const override { return false; }

  Result<size_t> compress(TensorId id, ConstView grad, MutableBytes out,
                          const StepInfo& /*step*/) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, grad, "gradient"));
    FRUGAL_CHECK(out.size() >= max_compressed_bytes(id), "output buffer too small");
    std::span<uint32_t> indices = thread_selection_buffers().indices_of(numel(id));
    const FilterResult filtered =
        filter_at_least(grad.typed<float>(), threshold_key(static_cast<float>(value_)), indices);
    if (filtered.non_finite()) return non_finite_error(id);
    return encode(id, grad, indices.first(static_cast<size_t>(filtered.count)), out);
  }

 protected:
  // No k: a threshold can select every element.
  int64_t max_count(TensorId id) const override { return numel(id); }

 private:
  double value_;
};

Result<double> read_density(const BuildRequest& request) {
  return request.params.real("density", 0.01, 0.0, 1.0, /*min_exclusive=*/true);
}

}  // namespace

std::vector<CompressorEntry> topk_compressor_entries() {
  return {
      {"topk",
       "exact top-k by magnitude per tensor (ties to the lower index), allgathered",
       {{"density", "0.01",
         "fraction of elements sent, 0 < density <= 1; k = max(1, floor(density * numel))"}},
       InnerSpec::kNone,
       {"topk:density=0.01", "topk:density=1"},
       [](const BuildRequest& request) -> Result<std::unique_ptr<Compressor>> {
         FRUGAL_RETURN_IF_ERROR(check_sparse_value_dtype("topk", request.value_dtype));
         FRUGAL_ASSIGN_OR_RETURN(double density, read_density(request));
         return std::unique_ptr<Compressor>(
             new TopkCompressor(request.context, request.value_dtype, density));
       },
       loses_below_full_density},
      {"threshold",
       "every element with |x| >= value (Strom), variable size, allgatherv'd",
       {{"value", "0.01", "magnitude threshold, 0 <= value (0 sends every element)"}},
       InnerSpec::kNone,
       {"threshold:value=0.5"},
       [](const BuildRequest& request) -> Result<std::unique_ptr<Compressor>> {
         FRUGAL_RETURN_IF_ERROR(check_sparse_value_dtype("threshold", request.value_dtype));
         FRUGAL_ASSIGN_OR_RETURN(
             double value,
             request.params.real("value", 0.01, 0.0, std::numeric_limits<float>::max()));
         return std::unique_ptr<Compressor>(
             new ThresholdCompressor(request.context, request.value_dtype, value));
       },
       [](const ParamReader& params) {
         auto value = params.real("value", 0.01, 0.0, std::numeric_limits<float>::max());
         return value.is_ok() && value.value() > 0;
       }},
  };
}

}  // namespace frugal
