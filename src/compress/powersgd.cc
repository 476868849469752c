// PowerSGD (Vogels et al., NeurIPS 2019) with the semantics of PyTorch's powerSGD_hook: one step
// of subspace iteration per exchange, warm-started from the last Q, with error feedback built in.
//
// A tensor is viewed as M (n x m, n = shape[0], m = numel / n, row-major), M = gradient + error.
// With r = min(rank, n, m), it is compressed when (n + m) * r * min_compression_rate < n * m;
// 1-D tensors and tensors that fail the test are sent dense. Two allreduce(sum) rounds, f32:
//   round 0  compress:   Q orthogonalized (drawn at the first step, or every step without
//                        warm_start, from Rng(seed, step, name, kInitialization) uniform in
//                        [-0.5, 0.5)), P = M Q (n x r) is sent.
//   round 1  next_round: the summed P is orthogonalized (Gram-Schmidt, as PyTorch's with
//                        epsilon 1e-8 added to each norm), Q = M^T P (m x r) is sent.
//   decompress_accumulate(summed Q): adds P Q^T = P P^T (sum over ranks of M), and keeps
//                        error = M - P Q^T / world_size and Q / world_size for the warm start.
// A dense tensor sends nothing in round 0 (compress keeps a copy of the gradient) and its values
// in round 1, so decompress_accumulate always decodes the payload it is given.
//
// Cost model: compressed, 4 n r bytes then 4 m r bytes through two allreduces, against 4 n m
// dense; compute 2 n m r flops per product, three products (M Q, M^T P, P Q^T) plus one more
// for the error. Dense, 0 then 4 n m bytes.
//
// State, keyed "<tensor>:powersgd.<field>": error (the tensor's shape, with error_feedback) and q
// (m x r, with warm_start, once drawn). Export between exchanges: from compress to
// decompress_accumulate the error buffer holds M.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "compress/compressor_base.h"
#include "compress/registry.h"
#include "compress/rng.h"
#include "compress/spec.h"

namespace frugal {
namespace {

constexpr float kOrthogonalizationEpsilon = 1e-8f;  // PyTorch's default

inline bool non_finite_bits(uint32_t bits) { return (bits & 0x7F800000u) == 0x7F800000u; }

// Modified Gram-Schmidt on the columns of a row-major rows x cols matrix, in place: each column is
// divided by (its norm + epsilon), then removed from the columns after it. Norms and dot products
// are accumulated in double. An all-zero column stays zero (the epsilon keeps it finite).
void orthogonalize(float* a, int64_t rows, int cols) {
  std::vector<double> dots(static_cast<size_t>(cols));
  for (int i = 0; i < cols; ++i) {
    double square_sum = 0;
    for (int64_t k = 0; k < rows; ++k) {
      const double v = a[k * cols + i];
      square_sum += v * v;
    }
    const auto divisor = static_cast<float>(std::sqrt(square_sum)) + kOrthogonalizationEpsilon;
    for (int64_t k = 0; k < rows; ++k) a[k * cols + i] /= divisor;
    if (i + 1 == cols) break;
    std::fill(dots.begin(), dots.end(), 0.0);
    for (int64_t k = 0; k < rows; ++k) {
      const float* row = a + k * cols;
      const double v = row[i];
      for (int j = i + 1; j < cols; ++j) dots[static_cast<size_t>(j)] += v * row[j];
    }
    for (int64_t k = 0; k < rows; ++k) {
      float* row = a + k * cols;
      for (int j = i + 1; j < cols; ++j) {
        row[j] -= static_cast<float>(dots[static_cast<size_t>(j)]) * row[i];
      }
    }
  }
}

// Copies `bytes` into `values` (f32) and reports whether one of them is NaN or Inf.
bool load_f32(ConstBytes bytes, std::vector<float>& values) {
  values.resize(bytes.size() / sizeof(float));
  if (!values.empty()) std::memcpy(values.data(), bytes.data(), bytes.size());
  uint32_t bad = 0;
  for (float v : values) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    bad |= non_finite_bits(bits) ? 1u : 0u;
  }
  return bad != 0;
}

struct PowerSgdOptions {
  int rank = 4;
  bool warm_start = true;
  bool error_feedback = true;
  double min_compression_rate = 2;
};

class PowerSgdCompressor final : public CompressorBase {
 public:
  PowerSgdCompressor(const CompressorContext& context, const PowerSgdOptions& options)
      : CompressorBase(context), options_(options) {}

  std::string spec() const override {
    return "powersgd:rank=" + format_param(options_.rank) +
           ",warm_start=" + (options_.warm_start ? "true" : "false") +
           ",error_feedback=" + (options_.error_feedback ? "true" : "false") +
           ",min_compression_rate=" + format_param(options_.min_compression_rate);
  }
  Aggregation aggregation() const override { return Aggregation::kSum; }
  DType payload_dtype() const override { return DType::kF32; }
  int rounds() const override { return 2; }
  // Round 0 and round 1 differ in size (P, then Q; nothing, then the dense values).
  bool fixed_size() const override { return false; }
  size_t max_compressed_bytes(TensorId id) const override {
    const TensorState& s = states_[static_cast<size_t>(id)];
    if (!s.compressed) return static_cast<size_t>(numel(id)) * sizeof(float);
    return static_cast<size_t>(std::max(s.rows, s.cols) * s.rank) * sizeof(float);
  }

  Result<size_t> compress(TensorId id, ConstView grad, MutableBytes out,
                          const StepInfo& step) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, grad, "gradient"));
    FRUGAL_CHECK(out.size() >= max_compressed_bytes(id), "output buffer too small");
    TensorState& s = states_[static_cast<size_t>(id)];
    const auto n = static_cast<size_t>(numel(id));
    const auto* in = static_cast<const float*>(grad.data);
    const auto* in_bits = static_cast<const uint32_t*>(grad.data);
    s.matrix.resize(n, 0.0f);  // allocated at the first step; zero is "no error yet"
    float* m = s.matrix.data();
    uint32_t bad = 0;
    if (s.compressed && options_.error_feedback) {
      for (size_t i = 0; i < n; ++i) {
        m[i] += in[i];
        uint32_t bits;
        std::memcpy(&bits, &m[i], sizeof(bits));
        bad |= non_finite_bits(bits) ? 1u : 0u;
      }
    } else {
      for (size_t i = 0; i < n; ++i) bad |= non_finite_bits(in_bits[i]) ? 1u : 0u;
      if (n > 0) std::memcpy(m, in, n * sizeof(float));
    }
    if (bad != 0) {
      // M = gradient + error is in place, so the error is gone; a zero error is better than one
      // that carries the NaN into every later step.
      std::fill(s.matrix.begin(), s.matrix.end(), 0.0f);
      s.phase = Phase::kIdle;
      return non_finite_error(id);
    }
    s.phase = Phase::kCompressed;
    if (!s.compressed) return size_t{0};  // the dense values go in round 1

    const size_t q_size = static_cast<size_t>(s.cols * s.rank);
    if (!options_.warm_start || !s.q_valid) {
      // Identical on every rank: a function of (seed, step, name) only.
      Rng rng(context().seed, step.step, tensor(id).name, RngPurpose::kInitialization);
      s.q.resize(q_size);
      for (float& v : s.q) v = rng.uniform() - 0.5f;
      s.q_valid = true;
    }
    orthogonalize(s.q.data(), s.cols, s.rank);
    s.p.resize(static_cast<size_t>(s.rows * s.rank));
    // P = M Q: (n x m) (m x r).
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blas_int(s.rows), s.rank,
                blas_int(s.cols), 1.0f, m, blas_int(s.cols), s.q.data(), s.rank, 0.0f, s.p.data(),
                s.rank);
    const size_t bytes = s.p.size() * sizeof(float);
    std::memcpy(out.data(), s.p.data(), bytes);
    return bytes;
  }

  Result<size_t> next_round(TensorId id, int round, ConstBytes reduced, MutableBytes out,
                            const StepInfo& /*step*/) override {
    if (id < 0 || id >= num_tensors()) {
      return invalid_argument(spec() + ": tensor id " + std::to_string(id) + " is not registered");
    }
    if (round != 0) {
      return invalid_argument(spec() + ": next_round of tensor '" + tensor(id).name +
                              "' got round " + std::to_string(round) +
                              "; powersgd has rounds 0 (P) and 1 (Q)");
    }
    TensorState& s = states_[static_cast<size_t>(id)];
    if (s.phase != Phase::kCompressed) {
      return failed_precondition(spec() + ": next_round of tensor '" + tensor(id).name +
                                 "' without a compress() before it");
    }
    FRUGAL_CHECK(out.size() >= max_compressed_bytes(id), "output buffer too small");
    const size_t expected = s.compressed ? static_cast<size_t>(s.rows * s.rank) * 4 : 0;
    if (reduced.size() != expected) {
      return corrupt_payload(id, "round 0 reduced payload has " + std::to_string(reduced.size()) +
                                     " bytes; expected " + std::to_string(expected));
    }
    s.phase = Phase::kSentQ;
    if (!s.compressed) {
      const size_t bytes = s.matrix.size() * sizeof(float);
      if (bytes > 0) std::memcpy(out.data(), s.matrix.data(), bytes);
      return bytes;
    }
    if (load_f32(reduced, s.p)) {
      s.phase = Phase::kIdle;
      return corrupt_payload(id, "the summed P has a non-finite value (overflow)");
    }
    orthogonalize(s.p.data(), s.rows, s.rank);
    // Q = M^T P: (m x n) (n x r).
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, blas_int(s.cols), s.rank, blas_int(s.rows),
                1.0f, s.matrix.data(), blas_int(s.cols), s.p.data(), s.rank, 0.0f, s.q.data(),
                s.rank);
    const size_t bytes = s.q.size() * sizeof(float);
    std::memcpy(out.data(), s.q.data(), bytes);
    return bytes;
  }

  Status decompress_accumulate(TensorId id, ConstBytes payload, MutableView accum) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, accum, "accumulator"));
    TensorState& s = states_[static_cast<size_t>(id)];
    auto* out = static_cast<float*>(accum.data);
    const size_t n = static_cast<size_t>(numel(id));
    if (!s.compressed) {
      if (payload.size() != n * sizeof(float)) {
        return corrupt_payload(id, std::to_string(payload.size()) + " bytes; expected " +
                                       std::to_string(n * sizeof(float)) + " (dense f32)");
      }
      const std::byte* p = payload.data();
      for (size_t i = 0; i < n; ++i) {
        float v;
        std::memcpy(&v, p + 4 * i, sizeof(v));
        out[i] += v;
      }
      s.phase = Phase::kIdle;
      return Status::ok();
    }
    if (s.phase != Phase::kSentQ) {
      return failed_precondition(spec() + ": decompress_accumulate of tensor '" + tensor(id).name +
                                 "' before its next_round (P is not known yet)");
    }
    const size_t expected = static_cast<size_t>(s.cols * s.rank) * sizeof(float);
    if (payload.size() != expected) {
      return corrupt_payload(id, std::to_string(payload.size()) + " bytes; expected " +
                                     std::to_string(expected) + " (the summed Q, " +
                                     std::to_string(s.cols) + " x " + std::to_string(s.rank) + ")");
    }
    if (load_f32(payload, s.q)) {
      s.phase = Phase::kIdle;
      s.q_valid = false;
      return corrupt_payload(id, "the summed Q has a non-finite value (overflow)");
    }
    // accum += P Q^T: (n x r) (r x m).
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blas_int(s.rows), blas_int(s.cols), s.rank,
                1.0f, s.p.data(), s.rank, s.q.data(), s.rank, 1.0f, out, blas_int(s.cols));
    const float inverse_world = 1.0f / static_cast<float>(context().world_size);
    if (options_.error_feedback) {
      // error = M - P Q^T / world_size: this rank's share of what the average did not carry.
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blas_int(s.rows), blas_int(s.cols),
                  s.rank, -inverse_world, s.p.data(), s.rank, s.q.data(), s.rank, 1.0f,
                  s.matrix.data(), blas_int(s.cols));
    }
    // The averaged Q warm-starts the next step (its scale does not matter: it is orthogonalized).
    for (float& v : s.q) v *= inverse_world;
    s.q_valid = options_.warm_start;
    s.phase = Phase::kIdle;
    return Status::ok();
  }

  // PowerSGD's payload is a factor, not a gradient: error feedback is built in (error_feedback),
  // and an outer ef(...) cannot subtract a P.
  Status subtract_own_payload(TensorId id, ConstBytes /*payload*/,
                              MutableView /*target*/) override {
    return failed_precondition(spec() + ": tensor '" + tensor(id).name +
                               "': powersgd keeps its own error feedback (error_feedback=true); "
                               "do not wrap it in ef(...)");
  }

  StateDict export_state() const override {
    StateDict state;
    for (TensorId id = 0; id < num_tensors(); ++id) {
      const TensorState& s = states_[static_cast<size_t>(id)];
      if (!s.compressed) continue;
      const std::string& name = tensor(id).name;
      if (options_.error_feedback && !s.matrix.empty()) {
        save_f32_state(state, state_key(name, "powersgd.error"), tensor(id).shape, s.matrix);
      }
      if (options_.warm_start && s.q_valid) {
        save_f32_state(state, state_key(name, "powersgd.q"), {s.cols, s.rank}, s.q);
      }
    }
    return state;
  }

  Status import_state(const StateDict& saved) override {
    // Load into copies first so that a rejected import changes nothing.
    std::vector<TensorState> loaded = states_;
    for (TensorId id = 0; id < num_tensors(); ++id) {
      TensorState& s = loaded[static_cast<size_t>(id)];
      s.phase = Phase::kIdle;
      s.matrix.clear();
      s.q_valid = false;
      if (!s.compressed) continue;
      const std::string& name = tensor(id).name;
      if (options_.error_feedback) {
        FRUGAL_ASSIGN_OR_RETURN(bool found, load_f32_state(saved, state_key(name, "powersgd.error"),
                                                           tensor(id).shape, s.matrix));
        if (!found) s.matrix.clear();
      }
      if (options_.warm_start) {
        FRUGAL_ASSIGN_OR_RETURN(
            s.q_valid, load_f32_state(saved, state_key(name, "powersgd.q"), {s.cols, s.rank}, s.q));
      }
    }
    states_ = std::move(loaded);
    return Status::ok();
  }

  CompressorStats stats() const override {
    int64_t bytes = 0;
    if (options_.error_feedback) {
      for (const TensorState& s : states_) {
        if (s.compressed) bytes += s.rows * s.cols * 4;
      }
    }
    return {bytes, 0};
  }

 protected:
  Status on_register(TensorId id, const TensorInfo& info) override {
    FRUGAL_CHECK(static_cast<size_t>(id) == states_.size(), "tensor ids are dense");
    TensorState s;
    const int64_t numel = shape_numel(info.shape);
    if (info.shape.size() >= 2 && numel > 0) {
      const int64_t rows = info.shape[0];
      const int64_t cols = numel / rows;
      const int64_t rank = std::min<int64_t>({options_.rank, rows, cols});
      // PyTorch's _should_compress: worth it when (n + m) r * rate < n m.
      const double compressed = static_cast<double>(rows + cols) * static_cast<double>(rank);
      if (compressed * options_.min_compression_rate < static_cast<double>(numel)) {
        if (rows > kMaxBlasDim || cols > kMaxBlasDim) {
          return invalid_argument(spec() + ": tensor '" + info.name + "' of shape " +
                                  shape_to_string(info.shape) + " is viewed as " +
                                  std::to_string(rows) + " x " + std::to_string(cols) +
                                  "; BLAS takes dimensions up to " + std::to_string(kMaxBlasDim));
        }
        s.compressed = true;
        s.rows = rows;
        s.cols = cols;
        s.rank = static_cast<int>(rank);
      }
    }
    states_.push_back(std::move(s));
    return Status::ok();
  }

 private:
  static constexpr int64_t kMaxBlasDim = 2147483647;  // CBLAS takes int dimensions

  static int blas_int(int64_t v) { return static_cast<int>(v); }

  enum class Phase { kIdle, kCompressed, kSentQ };

  struct TensorState {
    bool compressed = false;
    int64_t rows = 0;  // n
    int64_t cols = 0;  // m
    int rank = 0;      // r = min(rank, n, m)
    // M = gradient + error from compress to decompress_accumulate, the error after it (with
    // error_feedback); the dense gradient from compress to next_round for a dense tensor.
    std::vector<float> matrix;
    std::vector<float> p;  // n x r: this rank's P, then the summed and orthogonalized P
    std::vector<float> q;  // m x r: warm-start Q, then this rank's M^T P, then the averaged Q
    bool q_valid = false;
    Phase phase = Phase::kIdle;
  };

  PowerSgdOptions options_;
  std::vector<TensorState> states_;  // by TensorId
};

Result<std::unique_ptr<Compressor>> make_powersgd(const BuildRequest& request) {
  if (request.value_dtype != DType::kF32) {
    return invalid_argument(
        "powersgd sends f32 factors; it cannot be wrapped in fp16(...) or "
        "bf16(...)");
  }
  PowerSgdOptions options;
  FRUGAL_ASSIGN_OR_RETURN(int64_t rank, request.params.integer("rank", 4, 1, 64));
  options.rank = static_cast<int>(rank);
  FRUGAL_ASSIGN_OR_RETURN(options.warm_start, request.params.boolean("warm_start", true));
  FRUGAL_ASSIGN_OR_RETURN(options.error_feedback, request.params.boolean("error_feedback", true));
  FRUGAL_ASSIGN_OR_RETURN(options.min_compression_rate,
                          request.params.real("min_compression_rate", 2, 0, 1e6));
  return std::unique_ptr<Compressor>(new PowerSgdCompressor(request.context, options));
}

}  // namespace

std::vector<CompressorEntry> powersgd_compressor_entries() {
  return {
      {"powersgd",
       "PowerSGD: rank-r factors P then Q through two allreduces, warm start, built-in error "
       "feedback; 1-D and small tensors dense",
       {{"rank", "4", "rank r of the approximation, 1..64 (capped at min(n, m))"},
        {"warm_start", "true", "reuse the last step's Q instead of a fresh random one"},
        {"error_feedback", "true", "carry M - approximation to the next step"},
        {"min_compression_rate", "2",
         "compress an n x m tensor only when (n + m) r * rate < n m; 0..1e6"}},
       InnerSpec::kNone,
       {"powersgd:rank=2", "powersgd:rank=1,warm_start=false,error_feedback=false"},
       make_powersgd,
       [](const ParamReader& params) {
         auto error_feedback = params.boolean("error_feedback", true);
         return error_feedback.is_ok() && !error_feedback.value();
       }},
  };
}

}  // namespace frugal
