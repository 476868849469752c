// ef(inner): GRACE's residual memory (error feedback). Per tensor, one f32 residual r of numel
// elements, allocated at registration:
//   c = grad + r;  payload = inner.compress(c);  r = c - decode(payload)
// computed in place in r (the inner's subtract_own_payload: no dense temporary), so
// sent + new residual == grad + old residual exactly where the inner decodes exactly (sparse f32
// values; fp16, since c - f16(c) is exact). Wraps kSum and kGather compressors; rejects two-phase
// ones and multi-round ones (they keep their own error feedback) and nested memories.
// Cost model: the inner's bytes on the wire; 4 bytes of residual per element.
#include <algorithm>

#include "compress/memories_internal.h"
#include "compress/sparse_payload.h"

namespace frugal::memory_internal {

Result<size_t> EfStep::run(std::span<float> buffer) {
  const std::span<const float> g = grad();
  FRUGAL_CHECK(buffer.size() == g.size(), "residual buffer does not match the tensor");
  if (add_and_check(buffer.data(), g.data(), g.size())) return owner_.non_finite_error(id_);
  Compressor& inner = owner_.inner();
  const ConstView compensated{buffer.data(), DType::kF32, grad_.shape};
  FRUGAL_ASSIGN_OR_RETURN(used_, inner.compress(id_, compensated, out_, step_));
  FRUGAL_RETURN_IF_ERROR(
      inner.subtract_own_payload(id_, payload(), {buffer.data(), DType::kF32, grad_.shape}));
  return used_;
}

Status EfStep::add_scaled_payload(std::span<float> target, float scale) const {
  Compressor& inner = owner_.inner();
  if (std::optional<DType> value_dtype = inner.sparse_value_dtype()) {
    FRUGAL_ASSIGN_OR_RETURN(
        SparsePayloadView view,
        parse_sparse(payload(), *value_dtype, static_cast<int64_t>(target.size())));
    return scatter_add_sparse(view, target, scale);
  }
  // Only decompress_accumulate decodes a general payload: t + s * d == s * (t / s + d).
  FRUGAL_CHECK(scale >= 0x1p-60f, "payload scale too small to divide by");
  const float inverse = 1.0f / scale;
  for (float& x : target) x *= inverse;
  Status status =
      inner.decompress_accumulate(id_, payload(), {target.data(), DType::kF32, grad_.shape});
  for (float& x : target) x *= scale;
  return status;
}

Result<size_t> ErrorFeedbackCompressor::compress(TensorId id, ConstView grad, MutableBytes out,
                                                 const StepInfo& step) {
  FRUGAL_RETURN_IF_ERROR(check_view(id, grad, "gradient"));
  EfStep ef_step(*this, id, grad, out, step);
  return store_->compress(id, ef_step);
}

Status ErrorFeedbackCompressor::on_register(TensorId id, const TensorInfo& info) {
  FRUGAL_RETURN_IF_ERROR(CompressorDecorator::on_register(id, info));
  store_->on_register(id, info);
  return Status::ok();
}

StateDict ErrorFeedbackCompressor::export_state() const {
  StateDict state = inner().export_state();
  store_->export_state(state);
  return state;
}

Status ErrorFeedbackCompressor::import_state(const StateDict& state) {
  // The store validates before it changes anything; the inner compressor's state is restored
  // after it, so a bad residual leaves both untouched.
  FRUGAL_RETURN_IF_ERROR(store_->import_state(state));
  return inner().import_state(state);
}

CompressorStats ErrorFeedbackCompressor::stats() const {
  CompressorStats total = inner().stats();
  const CompressorStats own = store_->stats();
  total.residual_bytes += own.residual_bytes;
  total.residual_bytes_saved += own.residual_bytes_saved;
  return total;
}

namespace {

class PlainResidualStore final : public ResidualStore {
 public:
  std::string spec(const std::string& inner_spec) const override {
    return "ef(" + inner_spec + ")";
  }

  void on_register(TensorId /*id*/, const TensorInfo& info) override {
    tensors_.push_back(info);
    residuals_.emplace_back(static_cast<size_t>(shape_numel(info.shape)), 0.0f);
  }

  Result<size_t> compress(TensorId id, EfStep& step) override {
    std::vector<float>& residual = residuals_[static_cast<size_t>(id)];
    Result<size_t> used = step.run(residual);
    if (!used.is_ok()) std::fill(residual.begin(), residual.end(), 0.0f);
    return used;
  }

  void export_state(StateDict& state) const override {
    for (size_t i = 0; i < tensors_.size(); ++i) {
      save_f32_state(state, state_key(tensors_[i].name, "ef.residual"), tensors_[i].shape,
                     residuals_[i]);
    }
  }

  Status import_state(const StateDict& state) override {
    std::vector<std::vector<float>> loaded(tensors_.size());
    for (size_t i = 0; i < tensors_.size(); ++i) {
      FRUGAL_ASSIGN_OR_RETURN(bool found,
                              load_f32_state(state, state_key(tensors_[i].name, "ef.residual"),
                                             tensors_[i].shape, loaded[i]));
      if (!found) loaded[i].assign(residuals_[i].size(), 0.0f);
    }
    residuals_ = std::move(loaded);
    return Status::ok();
  }

  CompressorStats stats() const override {
    CompressorStats stats;
    for (const std::vector<float>& r : residuals_) {
      stats.residual_bytes += static_cast<int64_t>(r.size() * sizeof(float));
    }
    return stats;
  }

 private:
  std::vector<TensorInfo> tensors_;
  std::vector<std::vector<float>> residuals_;
};

Result<std::unique_ptr<Compressor>> ef_factory(const BuildRequest& request) {
  const SpecNode& inner_node = *request.node.inner;
  FRUGAL_RETURN_IF_ERROR(reject_nested_memory(spec_text(request.node), inner_node));
  FRUGAL_ASSIGN_OR_RETURN(std::unique_ptr<Compressor> inner,
                          request.build(inner_node, request.value_dtype));
  FRUGAL_RETURN_IF_ERROR(check_error_feedback_inner("ef", *inner));
  return std::unique_ptr<Compressor>(
      new ErrorFeedbackCompressor(request.context, std::move(inner), make_plain_residual_store()));
}

}  // namespace

std::unique_ptr<ResidualStore> make_plain_residual_store() {
  return std::make_unique<PlainResidualStore>();
}

CompressorEntry ef_entry() {
  return {"ef",
          "error feedback (GRACE residual memory): adds back what the inner compressor did not "
          "send; 4 bytes of residual per element",
          {},
          InnerSpec::kRequired,
          {"ef(fp16)", "ef(topk:density=0.01)"},
          ef_factory,
          /*loses_unsent=*/nullptr,
          /*keeps_memory=*/true};
}

}  // namespace frugal::memory_internal
