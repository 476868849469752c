// Threshold-estimating sparsifiers: dgc, gaussiank, redsync, sidco. Each estimates a magnitude
// threshold that keeps about k = max(1, floor(density * n)) elements and sends every element at or
// above it, in the sparse format of sparse_payload.h (allgatherv'd: the count varies per step).
// When an estimate overshoots the method's upper bound, the compressor sends the exact top-k
// instead (DGC's own refinement; a bound for the others), so payloads stay below max_count.
//
// Cost model (bytes on the wire per rank, values of v bytes: 4 for f32, 2 under fp16/bf16):
//   4 + c * (4 + v) with c, the selected count, within:
//   dgc:density=D        [0.8k, 1.3k] (below 0.8k only after 10 lowering rounds); max 1.3k
//   gaussiank:density=D  [2k/3, 4k/3] (k exactly when 5 rounds miss the window)
//   redsync:density=D    [k, 1.5k] (exact top-k when the search does not converge)
//   sidco:density=D      free estimate, capped at 2k (above falls back to the exact top-k);
//                        measured 0.58k-1.1k on Gaussian, Laplace and Student-t(3) at stages=3,
//                        0.02k on Gaussian at stages=1 (one exponential fits a normal tail badly)
// Passes over the tensor (memory reads): dgc 1 + a 1% sample; gaussiank 2 (moments, filter) plus
// one per adjustment (and a top-k when 5 miss); redsync 1 when last step's threshold still fits,
// else about 4; sidco stages + 1.
#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

#include "compress/registry.h"
#include "compress/rng.h"
#include "compress/sparse_compressor.h"

namespace frugal {
namespace {

Result<double> read_density(const BuildRequest& request) {
  return request.params.real("density", 0.01, 0.0, 1.0, /*min_exclusive=*/true);
}

// The upper-tail quantile z of the standard normal: P(Z > z) = q, 0 < q <= 0.5. Bisection on
// erfc: exact to double precision in 64 halvings of [0, 40], and the same on every libm that
// rounds erfc correctly enough to order its values.
double normal_upper_quantile(double q) {
  double lo = 0.0;
  double hi = 40.0;
  for (int i = 0; i < 64; ++i) {
    const double mid = 0.5 * (lo + hi);
    if (0.5 * std::erfc(mid / std::sqrt(2.0)) > q) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return 0.5 * (lo + hi);
}

// floor(numerator / denominator * k) >= k, the upper bound of a method's count window.
int64_t scaled_count(int64_t k, int64_t numerator, int64_t denominator) {
  return std::max<int64_t>(k, k * numerator / denominator);
}

// Shared by the estimators: a selection at a threshold, with the exact top-k as the fallback when
// the count exceeds `cap`. Keeps the candidate buffer larger than cap so that the fallback usually
// runs on the candidates (top-k among the selected, as DGC's code does) rather than the tensor.
class ThresholdSelection {
 public:
  ThresholdSelection(std::span<const float> x, int64_t k, int64_t cap)
      : x_(x), k_(k), cap_(cap), buffers_(thread_selection_buffers()) {
    const auto n = static_cast<int64_t>(x.size());
    capacity_ = std::min<int64_t>(n, std::max<int64_t>(2 * cap_ + 1024, cap_));
    buffers_.indices_of(capacity_);
  }

  // Filters at `key`; returns the count (possibly above the capacity) and the non-finite flag.
  FilterResult filter(uint32_t key) {
    last_ = filter_at_least(
        x_, key, std::span<uint32_t>(buffers_.indices.data(), static_cast<size_t>(capacity_)));
    return last_;
  }

  // The final selection: the last filter's indices, or the exact top-k when it exceeded cap.
  // Returns false on non-finite input.
  bool finish(std::span<const uint32_t>& selected) {
    uint32_t* indices = buffers_.indices.data();
    if (last_.count <= cap_) {
      selected = {indices, static_cast<size_t>(last_.count)};
      return true;
    }
    if (last_.count <= capacity_) {
      keep_topk_of(x_, {indices, static_cast<size_t>(last_.count)}, k_, buffers_.topk);
    } else if (!select_topk(x_, k_, {indices, static_cast<size_t>(capacity_)}, buffers_.topk)) {
      return false;
    }
    selected = {indices, static_cast<size_t>(k_)};
    return true;
  }

  // Selects the exact top-k directly (estimators with nothing to estimate from).
  bool topk(std::span<const uint32_t>& selected) {
    last_.count = std::numeric_limits<int64_t>::max();
    return finish(selected);
  }

 private:
  std::span<const float> x_;
  int64_t k_;
  int64_t cap_;
  int64_t capacity_ = 0;
  SelectionBuffers& buffers_;
  FilterResult last_;
};

// Base of the four: density, value dtype, and the per-step k.
class EstimatorCompressor : public SparseCompressor {
 public:
  bool fixed_size() const override { return false; }

 protected:
  EstimatorCompressor(const CompressorContext& context, DType value_dtype, double density)
      : SparseCompressor(context, value_dtype), density_(density) {}

  double density() const { return density_; }

  // Encodes the selection, or reports non-finite input.
  Result<size_t> finish(TensorId id, const ConstView& grad, ThresholdSelection& selection,
                        MutableBytes out) {
    std::span<const uint32_t> selected;
    if (!selection.finish(selected)) return non_finite_error(id);
    return encode(id, grad, selected, out);
  }

 private:
  double density_;
};

// dgc (Lin et al., ICLR 2018): the threshold is the k_s-th largest magnitude of a random sample
// (drawn as random blocks of 16 consecutive elements)
// of s = max(ceil(sample * n), min(n, 1024)) elements (k_s = ceil(s * density)); selections below
// 0.8k lower the threshold by 0.8 (at most 10 rounds), selections above 1.3k keep the exact top-k
// among the selected. Optional warm-up: density decays exponentially from 0.25 at step 0 to D at
// step warmup_steps (DGC's 75%, 93.75%, ... sparsity schedule). Momentum correction is the
// momentum(...) memory's job. Stateless: the sample comes from Rng(seed, step, tensor).
class DgcCompressor final : public EstimatorCompressor {
 public:
  DgcCompressor(const CompressorContext& context, DType value_dtype, double density, double sample,
                int64_t warmup_steps)
      : EstimatorCompressor(context, value_dtype, density),
        sample_(sample),
        warmup_steps_(warmup_steps) {}

  std::string spec() const override {
    return wrap_spec("dgc:density=" + format_param(density()) + ",sample=" + format_param(sample_) +
                     ",warmup_steps=" + format_param(static_cast<double>(warmup_steps_)));
  }

  Result<size_t> compress(TensorId id, ConstView grad, MutableBytes out,
                          const StepInfo& step) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, grad, "gradient"));
    FRUGAL_CHECK(out.size() >= max_compressed_bytes(id), "output buffer too small");
    const std::span<const float> x = grad.typed<float>();
    const auto n = static_cast<int64_t>(x.size());
    const double density = density_at(step.step);
    const int64_t k = density_count(density, n);
    ThresholdSelection selection(x, k, upper(k));
    if (n == 0) return encode(id, grad, {}, out);

    // Threshold from the sample (with replacement, as torch.randint draws it).
    const int64_t samples = std::min<int64_t>(
        n,
        std::max<int64_t>(static_cast<int64_t>(std::ceil(sample_ * static_cast<double>(n))), 1024));
    std::vector<uint32_t>& keys = thread_selection_buffers().topk.keys;
    keys.resize(static_cast<size_t>(samples));
    if (samples == n) {
      for (int64_t i = 0; i < n; ++i) keys[i] = magnitude_key(x[i]);
    } else {
      // Sampled in blocks of kSampleBlock consecutive elements (one cache line) at random
      // offsets: a 16th of the random reads and RNG draws of element-wise sampling, which
      // dominated the compress time, for an estimate the 0.8/1.3 adjustment corrects anyway.
      Rng rng(context().seed, step.step, tensor(id).name, RngPurpose::kSampling);
      const auto starts = static_cast<uint64_t>(n - kSampleBlock + 1);
      for (int64_t i = 0; i < samples; i += kSampleBlock) {
        const auto start = static_cast<int64_t>(rng.below(starts));
        for (int64_t j = 0; j < kSampleBlock && i + j < samples; ++j) {
          keys[i + j] = magnitude_key(x[start + j]);
        }
      }
    }
    const auto sample_k = std::clamp<int64_t>(
        static_cast<int64_t>(std::ceil(static_cast<double>(samples) * density)), 1, samples);
    std::nth_element(keys.begin(), keys.begin() + (sample_k - 1), keys.end(),
                     std::greater<uint32_t>());
    uint32_t key = keys[static_cast<size_t>(sample_k - 1)];

    for (int round = 0;; ++round) {
      const FilterResult filtered = selection.filter(key);
      if (filtered.non_finite()) return non_finite_error(id);
      // count * 10 < 8k: below DGC's compress_lower_bound of 0.8.
      if (filtered.count * 10 >= 8 * k || round == kMaxLoweringRounds || key == 0) break;
      key = threshold_key(0.8f * key_value(key));
    }
    return finish(id, grad, selection, out);
  }

 protected:
  int64_t max_count(TensorId id) const override {
    const double peak = warmup_steps_ > 0 ? std::max(density(), kWarmupDensity) : density();
    return upper(density_count(peak, numel(id)));
  }

 private:
  static constexpr int kMaxLoweringRounds = 10;
  static constexpr double kWarmupDensity = 0.25;
  static constexpr int64_t kSampleBlock = 16;  // samples >= 1024 > kSampleBlock when sampling

  // DGC's compress_upper_bound: floor(1.3 k).
  static int64_t upper(int64_t k) { return scaled_count(k, 13, 10); }

  double density_at(int64_t step) const {
    if (warmup_steps_ <= 0 || step >= warmup_steps_ || density() >= kWarmupDensity) {
      return density();
    }
    const double progress =
        static_cast<double>(std::max<int64_t>(step, 0)) / static_cast<double>(warmup_steps_);
    return kWarmupDensity * std::pow(density() / kWarmupDensity, progress);
  }

  double sample_;
  int64_t warmup_steps_;
};

// gaussiank (Shi et al., "Understanding Top-k Sparsification", 2019; OMGS-SGD's code): assumes the
// gradient is normal, threshold t = mean + z * std with P(Z > z) = density / 2; then, at most 5
// evaluations: a count below 2k/3 halves t, above 4k/3 multiplies it by 1.5, and the first count
// within [2k/3, 4k/3] is sent. When 5 evaluations miss the window, the exact top-k is sent
// instead, so the count always lies in it. Tensors of 1M+ elements estimate mean and std from an
// eighth of their elements (sampled_moments). Stateless.
class GaussiankCompressor final : public EstimatorCompressor {
 public:
  GaussiankCompressor(const CompressorContext& context, DType value_dtype, double density)
      : EstimatorCompressor(context, value_dtype, density),
        z_(normal_upper_quantile(density / 2.0)) {}

  std::string spec() const override {
    return wrap_spec("gaussiank:density=" + format_param(density()));
  }

  Result<size_t> compress(TensorId id, ConstView grad, MutableBytes out,
                          const StepInfo& /*step*/) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, grad, "gradient"));
    FRUGAL_CHECK(out.size() >= max_compressed_bytes(id), "output buffer too small");
    const std::span<const float> x = grad.typed<float>();
    const auto n = static_cast<int64_t>(x.size());
    const int64_t k = density_count(density(), n);
    ThresholdSelection selection(x, k, upper(k));
    if (n == 0) return encode(id, grad, {}, out);

    const auto [m, sampled] = sampled_moments(x);
    if (m.non_finite()) return non_finite_error(id);
    const double mean = m.sum / static_cast<double>(sampled);
    const double variance =
        sampled > 1
            ? std::max(0.0, (m.sum_squares - m.sum * mean) / static_cast<double>(sampled - 1))
            : 0.0;
    float threshold = static_cast<float>(std::max(0.0, mean + z_ * std::sqrt(variance)));
    for (int evaluation = 1; evaluation <= kMaxEvaluations; ++evaluation) {
      const FilterResult filtered = selection.filter(threshold_key(threshold));
      if (filtered.non_finite()) return non_finite_error(id);  // the moments may skip elements
      const int64_t count = filtered.count;
      if (3 * count < 2 * k) {
        threshold *= 0.5f;
      } else if (3 * count > 4 * k) {
        threshold *= 1.5f;
      } else {
        return finish(id, grad, selection, out);
      }
    }
    // The x0.5 / x1.5 steps can oscillate around the window on heavy tails (a Laplace gradient
    // alternates 2.6k, 0.4k, 6.5k, 1.7k, 0.2k): send the exact top-k rather than a count far off.
    std::span<const uint32_t> selected;
    if (!selection.topk(selected)) return non_finite_error(id);
    return encode(id, grad, selected, out);
  }

 protected:
  int64_t max_count(TensorId id) const override {
    return upper(density_count(density(), numel(id)));
  }

 private:
  static constexpr int kMaxEvaluations = 5;
  static int64_t upper(int64_t k) { return scaled_count(k, 4, 3); }

  // Mean and standard deviation from every kMomentStride-th block of kMomentBlock elements once
  // the tensor has kSampledMomentsFrom elements: an eighth of a pass instead of a full one, so
  // the filtering pass dominates. With 128K+ samples the estimate is well within what the
  // x0.5 / x1.5 adjustment corrects. Returns the moments and how many elements they cover.
  static std::pair<Moments, int64_t> sampled_moments(std::span<const float> x) {
    const auto n = static_cast<int64_t>(x.size());
    if (n < kSampledMomentsFrom) return {moments(x), n};
    Moments total;
    int64_t covered = 0;
    for (int64_t begin = 0; begin < n; begin += kMomentBlock * kMomentStride) {
      const int64_t size = std::min(kMomentBlock, n - begin);
      const Moments block =
          moments(x.subspan(static_cast<size_t>(begin), static_cast<size_t>(size)));
      total.sum += block.sum;
      total.sum_squares += block.sum_squares;
      total.max_key = std::max(total.max_key, block.max_key);
      covered += size;
    }
    return {total, covered};
  }
  static constexpr int64_t kMomentBlock = 256;
  static constexpr int64_t kMomentStride = 8;
  static constexpr int64_t kSampledMomentsFrom = int64_t{1} << 20;

  double z_;
};

// redsync (Fang et al., JPDC 2019, threshold binary search selection): binary search of the ratio
// r in [0, 1] with threshold t = mean|x| + r * (max|x| - mean|x|) until the count lies in
// [k, 1.5k]: a count above 1.5k raises r, below k lowers it. As RedSync reuses thresholds across
// iterations, last step's threshold is tried first and kept when its count still lies in the
// window (per-tensor state, saved as "<tensor>:redsync.threshold"). Three bisection levels are
// evaluated per pass (7 thresholds, count_at_least); no convergence within 24 levels (ties) sends
// the exact top-k.
class RedsyncCompressor final : public EstimatorCompressor {
 public:
  RedsyncCompressor(const CompressorContext& context, DType value_dtype, double density)
      : EstimatorCompressor(context, value_dtype, density) {}

  std::string spec() const override {
    return wrap_spec("redsync:density=" + format_param(density()));
  }

  Result<size_t> compress(TensorId id, ConstView grad, MutableBytes out,
                          const StepInfo& /*step*/) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, grad, "gradient"));
    FRUGAL_CHECK(out.size() >= max_compressed_bytes(id), "output buffer too small");
    const std::span<const float> x = grad.typed<float>();
    const auto n = static_cast<int64_t>(x.size());
    const int64_t k = density_count(density(), n);
    const int64_t hi = upper(k);
    ThresholdSelection selection(x, k, hi);
    if (n == 0) return encode(id, grad, {}, out);
    float& last = last_threshold_[static_cast<size_t>(id)];

    auto in_window = [&](int64_t count) { return count >= k && count <= hi; };
    if (!std::isnan(last)) {
      const FilterResult reused = selection.filter(threshold_key(last));
      if (reused.non_finite()) return non_finite_error(id);
      if (in_window(reused.count)) return finish(id, grad, selection, out);
    }
    const TailStats stats = tail_stats(x, 0);
    if (stats.non_finite()) return non_finite_error(id);
    const double mean = stats.abs_sum / static_cast<double>(n);
    const double max = key_value(stats.max_key);
    auto threshold_at = [&](double ratio) {
      return static_cast<float>(mean + ratio * (max - mean));
    };

    // Bisection of [lo, hi_ratio]; each pass counts the 7 midpoints of the next three levels.
    double lo = 0.0;
    double hi_ratio = 1.0;
    std::optional<float> found;
    for (int level = 0; level < kMaxLevels && !found && max > mean; level += 3) {
      uint32_t keys[7];
      for (int j = 1; j <= 7; ++j) {
        keys[j - 1] = threshold_key(threshold_at(lo + (hi_ratio - lo) * j / 8.0));
      }
      int64_t counts[7];
      count_at_least(x, keys, counts);
      // Walk three levels of the bisection tree over the 8 sub-intervals.
      int left = 0;  // sub-interval bounds in eighths
      int right = 8;
      for (int step = 0; step < 3 && !found; ++step) {
        const int mid = (left + right) / 2;
        const int64_t count = counts[mid - 1];
        if (in_window(count)) {
          found = threshold_at(lo + (hi_ratio - lo) * mid / 8.0);
        } else if (count > hi) {
          left = mid;  // too many: raise the threshold
        } else {
          right = mid;
        }
      }
      const double width = hi_ratio - lo;
      hi_ratio = lo + width * right / 8.0;
      lo = lo + width * left / 8.0;
    }
    if (!found) {
      last = std::numeric_limits<float>::quiet_NaN();
      std::span<const uint32_t> selected;
      if (!selection.topk(selected)) return non_finite_error(id);
      return encode(id, grad, selected, out);
    }
    last = *found;
    selection.filter(threshold_key(*found));
    return finish(id, grad, selection, out);
  }

  StateDict export_state() const override {
    StateDict state;
    for (TensorId id = 0; id < num_tensors(); ++id) {
      save_f32_state(state, state_key(tensor(id).name, "redsync.threshold"), {1},
                     {last_threshold_[static_cast<size_t>(id)]});
    }
    return state;
  }

  Status import_state(const StateDict& state) override {
    for (TensorId id = 0; id < num_tensors(); ++id) {
      std::vector<float> value;
      FRUGAL_ASSIGN_OR_RETURN(
          bool found,
          load_f32_state(state, state_key(tensor(id).name, "redsync.threshold"), {1}, value));
      last_threshold_[static_cast<size_t>(id)] =
          found ? value[0] : std::numeric_limits<float>::quiet_NaN();
    }
    return Status::ok();
  }

 protected:
  Status on_register(TensorId id, const TensorInfo& info) override {
    FRUGAL_RETURN_IF_ERROR(EstimatorCompressor::on_register(id, info));
    last_threshold_.push_back(std::numeric_limits<float>::quiet_NaN());  // none yet
    return Status::ok();
  }
  int64_t max_count(TensorId id) const override {
    return upper(density_count(density(), numel(id)));
  }

 private:
  static constexpr int kMaxLevels = 24;
  static int64_t upper(int64_t k) { return scaled_count(k, 3, 2); }

  std::vector<float> last_threshold_;  // per tensor; NaN when there is none to reuse
};

// sidco (Abdelmoniem et al., MLSys 2021, SIDCo-E): fits an exponential to |x| in `stages` stages,
// each keeping the fraction r = density^(1/stages) of the previous stage's tail: stage 1 has
// t1 = mean|x| * ln(1/r); stage j fits the exceedances |x| - t_{j-1} over the tail |x| >= t_{j-1}
// (the exponential is memoryless) and sets t_j = t_{j-1} + mean(exceedance) * ln(1/r). Sends
// {|x| >= t_stages}; a count above 2k sends the exact top-k instead. Stateless.
class SidcoCompressor final : public EstimatorCompressor {
 public:
  SidcoCompressor(const CompressorContext& context, DType value_dtype, double density,
                  int64_t stages)
      : EstimatorCompressor(context, value_dtype, density), stages_(stages) {}

  std::string spec() const override {
    return wrap_spec("sidco:density=" + format_param(density()) +
                     ",stages=" + format_param(static_cast<double>(stages_)));
  }

  Result<size_t> compress(TensorId id, ConstView grad, MutableBytes out,
                          const StepInfo& /*step*/) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, grad, "gradient"));
    FRUGAL_CHECK(out.size() >= max_compressed_bytes(id), "output buffer too small");
    const std::span<const float> x = grad.typed<float>();
    const auto n = static_cast<int64_t>(x.size());
    const int64_t k = density_count(density(), n);
    ThresholdSelection selection(x, k, upper(k));
    if (n == 0) return encode(id, grad, {}, out);

    const double log_inverse_ratio = -std::log(density()) / static_cast<double>(stages_);
    double threshold = 0.0;
    for (int64_t stage = 0; stage < stages_; ++stage) {
      const TailStats tail = tail_stats(x, threshold_key(static_cast<float>(threshold)));
      if (tail.non_finite()) return non_finite_error(id);
      if (tail.count == 0) break;
      const double mean_excess =
          std::max(0.0, tail.abs_sum / static_cast<double>(tail.count) - threshold);
      threshold += mean_excess * log_inverse_ratio;
    }
    if (selection.filter(threshold_key(static_cast<float>(threshold))).non_finite()) {
      return non_finite_error(id);
    }
    return finish(id, grad, selection, out);
  }

 protected:
  int64_t max_count(TensorId id) const override {
    return upper(density_count(density(), numel(id)));
  }

 private:
  static int64_t upper(int64_t k) { return scaled_count(k, 2, 1); }

  int64_t stages_;
};

template <typename Build>
CompressorFactory estimator_factory(const char* name, Build build) {
  return [name, build](const BuildRequest& request) -> Result<std::unique_ptr<Compressor>> {
    FRUGAL_RETURN_IF_ERROR(check_sparse_value_dtype(name, request.value_dtype));
    FRUGAL_ASSIGN_OR_RETURN(double density, read_density(request));
    return build(request, density);
  };
}

const ParamDoc kDensityDoc{"density", "0.01",
                           "target fraction of elements sent, 0 < density <= 1; "
                           "k = max(1, floor(density * numel))"};

}  // namespace

std::vector<CompressorEntry> estimator_compressor_entries() {
  return {
      {"dgc",
       "DGC's sampled threshold (top-k of a random sample), 0.8/1.3 adjustment, optional warm-up",
       {kDensityDoc,
        {"sample", "0.01", "fraction of elements sampled, 0 < sample <= 1 (at least 1024)"},
        {"warmup_steps", "0",
         "steps over which density decays exponentially from 0.25 to density; 0 disables"}},
       InnerSpec::kNone,
       {"dgc:density=0.01", "dgc:density=0.01,sample=0.05,warmup_steps=2"},
       estimator_factory(
           "dgc",
           [](const BuildRequest& request, double density) -> Result<std::unique_ptr<Compressor>> {
             FRUGAL_ASSIGN_OR_RETURN(double sample,
                                     request.params.real("sample", 0.01, 0.0, 1.0, true));
             FRUGAL_ASSIGN_OR_RETURN(int64_t warmup,
                                     request.params.integer("warmup_steps", 0, 0, 1'000'000'000));
             return std::unique_ptr<Compressor>(
                 new DgcCompressor(request.context, request.value_dtype, density, sample, warmup));
           }),
       loses_below_full_density},
      {"gaussiank",
       "Gaussian-k: normal-quantile threshold from mean/std, x0.5/x1.5 adjustment (5 rounds)",
       {kDensityDoc},
       InnerSpec::kNone,
       {"gaussiank:density=0.01"},
       estimator_factory(
           "gaussiank",
           [](const BuildRequest& request, double density) -> Result<std::unique_ptr<Compressor>> {
             return std::unique_ptr<Compressor>(
                 new GaussiankCompressor(request.context, request.value_dtype, density));
           }),
       loses_below_full_density},
      {"redsync",
       "RedSync: binary search of a threshold between mean and max |x|, reused across steps",
       {kDensityDoc},
       InnerSpec::kNone,
       {"redsync:density=0.01"},
       estimator_factory(
           "redsync",
           [](const BuildRequest& request, double density) -> Result<std::unique_ptr<Compressor>> {
             return std::unique_ptr<Compressor>(
                 new RedsyncCompressor(request.context, request.value_dtype, density));
           }),
       loses_below_full_density},
      {"sidco",
       "SIDCo-E: multi-stage exponential fit of |x|, threshold at the fitted quantile",
       {kDensityDoc, {"stages", "3", "fitting stages, 1 <= stages <= 8"}},
       InnerSpec::kNone,
       {"sidco:density=0.01", "sidco:density=0.001,stages=1"},
       estimator_factory(
           "sidco",
           [](const BuildRequest& request, double density) -> Result<std::unique_ptr<Compressor>> {
             FRUGAL_ASSIGN_OR_RETURN(int64_t stages, request.params.integer("stages", 3, 1, 8));
             return std::unique_ptr<Compressor>(
                 new SidcoCompressor(request.context, request.value_dtype, density, stages));
           }),
       loses_below_full_density},
  };
}

}  // namespace frugal
