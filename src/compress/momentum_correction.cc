// momentum(inner):momentum=0.9 -- DGC's momentum correction with momentum factor masking
// (Lin et al., ICLR 2018, Algorithm 1). Per tensor, a momentum u and an accumulated velocity v
// (f32, numel each, allocated at registration):
//   u = m * u + g;  v = v + u;  payload = inner.compress(v);
//   u[i] = v[i] = 0 for every index i the payload sends (factor masking),
// so coordinates that were sent restart from zero and the rest keep accumulating locally. The
// inner must use the sparse payload format (sparse_value_dtype() set: topk, threshold, dgc, ...),
// from which the sent indices are read; dense inners are rejected. Momentum is applied here, so
// the optimizer must run WITHOUT momentum (plain SGD on the aggregated gradient), as in the paper.
// Cost model: the inner's bytes on the wire; 8 bytes of state per element.
#include <algorithm>

#include "compress/memories_internal.h"
#include "compress/sparse_payload.h"

namespace frugal::memory_internal {
namespace {

class MomentumCorrection final : public CompressorDecorator {
 public:
  MomentumCorrection(const CompressorContext& context, std::unique_ptr<Compressor> inner,
                     double momentum)
      : CompressorDecorator(context, std::move(inner)),
        momentum_(momentum),
        value_dtype_(*this->inner().sparse_value_dtype()) {}

  std::string spec() const override {
    return "momentum(" + inner().spec() + "):momentum=" + format_param(momentum_);
  }

  Result<size_t> compress(TensorId id, ConstView grad, MutableBytes out,
                          const StepInfo& step) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, grad, "gradient"));
    State& state = states_[static_cast<size_t>(id)];
    Result<size_t> used = compress_with(id, state, grad, out, step);
    if (!used.is_ok()) {
      // A skipped step (an overflow under loss scaling) must not poison the later ones.
      std::fill(state.u.begin(), state.u.end(), 0.0f);
      std::fill(state.v.begin(), state.v.end(), 0.0f);
    }
    return used;
  }

  StateDict export_state() const override {
    StateDict state = inner().export_state();
    for (TensorId id = 0; id < num_tensors(); ++id) {
      const State& s = states_[static_cast<size_t>(id)];
      save_f32_state(state, state_key(tensor(id).name, "momentum.u"), tensor(id).shape, s.u);
      save_f32_state(state, state_key(tensor(id).name, "momentum.v"), tensor(id).shape, s.v);
    }
    return state;
  }

  Status import_state(const StateDict& state) override {
    std::vector<State> loaded(states_.size());
    for (TensorId id = 0; id < num_tensors(); ++id) {
      State& s = loaded[static_cast<size_t>(id)];
      const TensorInfo& info = tensor(id);
      FRUGAL_ASSIGN_OR_RETURN(
          bool has_u, load_f32_state(state, state_key(info.name, "momentum.u"), info.shape, s.u));
      FRUGAL_ASSIGN_OR_RETURN(
          bool has_v, load_f32_state(state, state_key(info.name, "momentum.v"), info.shape, s.v));
      if (has_u != has_v) {
        return data_loss("saved compressor state of tensor '" + info.name +
                         "' has only one of momentum.u and momentum.v");
      }
      if (!has_u) {
        s.u.assign(static_cast<size_t>(numel(id)), 0.0f);
        s.v.assign(static_cast<size_t>(numel(id)), 0.0f);
      }
    }
    FRUGAL_RETURN_IF_ERROR(inner().import_state(state));
    states_ = std::move(loaded);
    return Status::ok();
  }

  CompressorStats stats() const override {
    CompressorStats stats = inner().stats();
    for (const State& s : states_) {
      stats.residual_bytes += static_cast<int64_t>((s.u.size() + s.v.size()) * sizeof(float));
    }
    return stats;
  }

 protected:
  Status on_register(TensorId id, const TensorInfo& info) override {
    FRUGAL_RETURN_IF_ERROR(CompressorDecorator::on_register(id, info));
    const auto n = static_cast<size_t>(shape_numel(info.shape));
    states_.push_back({std::vector<float>(n, 0.0f), std::vector<float>(n, 0.0f)});
    return Status::ok();
  }

 private:
  struct State {
    std::vector<float> u;  // momentum
    std::vector<float> v;  // accumulated velocity: what compress() encodes
  };

  Result<size_t> compress_with(TensorId id, State& state, ConstView grad, MutableBytes out,
                               const StepInfo& step) {
    const auto n = static_cast<size_t>(numel(id));
    if (momentum_and_check(state.u.data(), state.v.data(), static_cast<const float*>(grad.data),
                           static_cast<float>(momentum_), n)) {
      return non_finite_error(id);
    }
    FRUGAL_ASSIGN_OR_RETURN(
        size_t used,
        inner().compress(id, {state.v.data(), DType::kF32, tensor(id).shape}, out, step));
    auto parsed = parse_sparse(ConstBytes(out.data(), used), value_dtype_, static_cast<int64_t>(n));
    if (!parsed.is_ok()) {
      return internal_error(spec() + ": inner payload of tensor '" + tensor(id).name +
                            "' is not a sparse payload: " + parsed.status().message());
    }
    const SparsePayloadView& payload = parsed.value();
    int64_t previous = -1;
    for (int64_t i = 0; i < payload.count; ++i) {
      const int64_t index = payload.index(i);
      if (index <= previous || index >= static_cast<int64_t>(n)) {
        return internal_error(spec() + ": inner payload of tensor '" + tensor(id).name +
                              "' has index " + std::to_string(index) + " out of order or range");
      }
      state.u[static_cast<size_t>(index)] = 0.0f;
      state.v[static_cast<size_t>(index)] = 0.0f;
      previous = index;
    }
    return used;
  }

  double momentum_;
  DType value_dtype_;
  std::vector<State> states_;
};

Result<std::unique_ptr<Compressor>> momentum_factory(const BuildRequest& request) {
  FRUGAL_ASSIGN_OR_RETURN(double momentum, request.params.real("momentum", 0.9, 0.0, 1.0));
  if (momentum >= 1.0) {
    return invalid_argument("momentum: momentum=" + format_param(momentum) +
                            " is invalid; valid: 0 <= momentum < 1");
  }
  const SpecNode& inner_node = *request.node.inner;
  FRUGAL_RETURN_IF_ERROR(reject_nested_memory(spec_text(request.node), inner_node));
  FRUGAL_ASSIGN_OR_RETURN(std::unique_ptr<Compressor> inner,
                          request.build(inner_node, request.value_dtype));
  FRUGAL_RETURN_IF_ERROR(check_error_feedback_inner("momentum", *inner));
  if (!inner->sparse_value_dtype()) {
    return invalid_argument(
        "momentum(" + inner->spec() +
        "): DGC's momentum correction masks the coordinates a sparse compressor sent, and " +
        inner->spec() +
        " is not sparse; wrap a sparsifier, e.g. momentum(topk:density=0.01), or use ef(" +
        inner->spec() + ")");
  }
  return std::unique_ptr<Compressor>(
      new MomentumCorrection(request.context, std::move(inner), momentum));
}

}  // namespace

CompressorEntry momentum_entry() {
  return {"momentum",
          "DGC momentum correction with factor masking around a sparse compressor (run the "
          "optimizer without momentum); 8 bytes of state per element",
          {{"momentum", "0.9", "momentum factor m, 0 <= m < 1 (u = m*u + g; v += u)"}},
          InnerSpec::kRequired,
          {"momentum(topk:density=0.01)"},
          momentum_factory,
          /*loses_unsent=*/nullptr,
          /*keeps_memory=*/true};
}

}  // namespace frugal::memory_internal
