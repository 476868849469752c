// Random-k (Stich et al. 2018; GRACE's randomk): every rank picks the same k = max(1,
// floor(density * n)) indices of a tensor, uniformly without replacement, from
// Rng(seed, step, tensor name, kRandomK). The payload is then just the k values in ascending index
// order, and the ranks' payloads add up under an allreduce (Aggregation::kSum).
//
// randomk:density=D,unbiased=B  payload: k values as f32 (f16 or bf16 under fp16(...)/bf16(...)).
//   unbiased=false (GRACE's default, meant for error feedback) decodes the values as they are;
//   unbiased=true scales them by n/k on decode so that E[decoded] = gradient (variance
//   x_i^2 (n/k - 1) per element).
//   Cost model: k * (4 or 2) bytes per rank through one allreduce; no indices on the wire.
//   decompress_accumulate and subtract_own_payload therefore reuse the indices of this rank's last
//   compress() of the tensor (kept per tensor, 4k bytes): decode after compressing the same step.
//
// Index sampling costs O(min(k, n-k)) draws and never touches the n - k unpicked values: Floyd's
// algorithm draws m = min(k, n - k) distinct indices (the complement when k > n/2) with one
// Rng::below each. When m < n/512 they go into an open-addressing set and are sorted
// (O(m log m)); otherwise into a bitmap of n bits, listed in ascending order by one scan of n/64
// words (O(m + n/64)). Both structures give the same set for the same draws.
#include "compress/randomk.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "compress/compressor_base.h"
#include "compress/rng.h"

namespace frugal {
namespace {

// Open-addressing set of u32 keys (linear probing), for Floyd's algorithm with few picks.
class IndexSet {
 public:
  explicit IndexSet(uint64_t capacity) {
    uint64_t size = 16;
    while (size < 2 * capacity) size *= 2;  // load factor <= 1/2
    shift_ = 64 - std::countr_zero(size);
    slots_.assign(size, kEmpty);
  }
  // Inserts `key` and returns true, or returns false when it is already present.
  bool insert(uint32_t key) {
    const uint64_t mask = slots_.size() - 1;
    for (uint64_t s = (key * 0x9E3779B97F4A7C15ull) >> shift_;; s = (s + 1) & mask) {
      if (slots_[s] == key) return false;
      if (slots_[s] == kEmpty) {
        slots_[s] = key;
        return true;
      }
    }
  }

 private:
  // Indices are < n <= 2^32 - 1, so the largest u32 is never a key.
  static constexpr uint32_t kEmpty = 0xFFFFFFFFu;
  std::vector<uint32_t> slots_;
  int shift_ = 0;
};

// Writes k indices drawn uniformly without replacement from [0, n) into `out`, ascending.
// REQUIRES: k <= n <= 2^32 - 1.
void sample_ascending(uint64_t n, uint64_t k, Rng& rng, std::vector<uint32_t>& out) {
  out.resize(k);
  if (k == 0) return;
  const bool complement = k > n / 2;  // draw the n - k indices left out instead
  const uint64_t m = complement ? n - k : k;
  if (!complement && m < n / 512) {
    IndexSet set(m);
    size_t count = 0;
    // Floyd: for j in [n - m, n), take t uniform in [0, j], or j itself when t is taken already.
    for (uint64_t j = n - m; j < n; ++j) {
      auto pick = static_cast<uint32_t>(rng.below(j + 1));
      if (!set.insert(pick)) {
        pick = static_cast<uint32_t>(j);  // new: every earlier pick is below j
        set.insert(pick);
      }
      out[count++] = pick;
    }
    std::sort(out.begin(), out.end());
    return;
  }
  std::vector<uint64_t> bits((n + 63) / 64, 0);
  for (uint64_t j = n - m; j < n; ++j) {
    uint64_t t = rng.below(j + 1);
    if ((bits[t / 64] >> (t % 64)) & 1) t = j;
    bits[t / 64] |= uint64_t{1} << (t % 64);
  }
  size_t count = 0;
  for (size_t w = 0; w < bits.size(); ++w) {
    uint64_t word = complement ? ~bits[w] : bits[w];
    if (complement && w + 1 == bits.size() && n % 64 != 0) word &= (uint64_t{1} << (n % 64)) - 1;
    while (word != 0) {
      out[count++] = static_cast<uint32_t>(w * 64 + static_cast<uint64_t>(std::countr_zero(word)));
      word &= word - 1;
    }
  }
  FRUGAL_CHECK(count == k, "random-k bitmap scan lost indices");
}

inline bool non_finite_bits(uint32_t bits) { return (bits & 0x7F800000u) == 0x7F800000u; }

class RandomKCompressor final : public CompressorBase {
 public:
  RandomKCompressor(const CompressorContext& context, double density, bool unbiased,
                    DType value_dtype)
      : CompressorBase(context),
        density_(density),
        unbiased_(unbiased),
        value_dtype_(value_dtype) {}

  std::string spec() const override {
    std::string s =
        "randomk:density=" + format_param(density_) + ",unbiased=" + (unbiased_ ? "true" : "false");
    if (value_dtype_ == DType::kF16) return "fp16(" + s + ")";
    if (value_dtype_ == DType::kBF16) return "bf16(" + s + ")";
    return s;
  }
  Aggregation aggregation() const override { return Aggregation::kSum; }
  DType payload_dtype() const override { return value_dtype_; }
  bool fixed_size() const override { return true; }
  size_t max_compressed_bytes(TensorId id) const override {
    return static_cast<size_t>(states_[static_cast<size_t>(id)].k) * dtype_size(value_dtype_);
  }

  Result<size_t> compress(TensorId id, ConstView grad, MutableBytes out,
                          const StepInfo& step) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, grad, "gradient"));
    FRUGAL_CHECK(out.size() >= max_compressed_bytes(id), "output buffer too small");
    TensorState& state = states_[static_cast<size_t>(id)];
    Rng rng(context().seed, step.step, tensor(id).name, RngPurpose::kRandomK);
    sample_ascending(static_cast<uint64_t>(numel(id)), static_cast<uint64_t>(state.k), rng,
                     state.indices);
    state.sampled = true;
    const auto* in = static_cast<const float*>(grad.data);
    const uint32_t* indices = state.indices.data();
    const size_t k = state.indices.size();
    std::byte* p = out.data();
    bool bad = false;
    for (size_t i = 0; i < k; ++i) {
      const float v = in[indices[i]];
      bad |= non_finite_bits(std::bit_cast<uint32_t>(v));
      if (value_dtype_ == DType::kF32) {
        std::memcpy(p + 4 * i, &v, 4);
      } else {
        const uint16_t h = value_dtype_ == DType::kF16 ? f32_to_f16(v) : f32_to_bf16(v);
        std::memcpy(p + 2 * i, &h, 2);
      }
    }
    if (bad) return non_finite_error(id);
    return max_compressed_bytes(id);
  }

  Status decompress_accumulate(TensorId id, ConstBytes payload, MutableView accum) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, accum, "accumulator"));
    return scatter(id, payload, accum.typed<float>(), scale(id));
  }

  // Touches only the k picked entries (the default would negate the whole tensor twice).
  Status subtract_own_payload(TensorId id, ConstBytes payload, MutableView target) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, target, "error-feedback target"));
    return scatter(id, payload, target.typed<float>(), -scale(id));
  }

 protected:
  Status on_register(TensorId id, const TensorInfo& info) override {
    const int64_t n = shape_numel(info.shape);
    if (n > int64_t{0xFFFFFFFF}) {
      return invalid_argument(spec() + ": tensor '" + info.name + "' has " + std::to_string(n) +
                              " elements; random-k takes at most 2^32 - 1");
    }
    FRUGAL_CHECK(static_cast<size_t>(id) == states_.size(), "tensor ids out of order");
    TensorState state;
    if (n > 0) {
      // The nudge keeps floor() exact for densities written in decimal (0.29 * 100 -> 29).
      const auto wanted =
          static_cast<int64_t>(std::floor(density_ * static_cast<double>(n) * (1.0 + 1e-12)));
      state.k = std::clamp<int64_t>(wanted, 1, n);
    }
    state.indices.reserve(static_cast<size_t>(state.k));
    states_.push_back(std::move(state));
    return Status::ok();
  }

 private:
  struct TensorState {
    int64_t k = 0;
    // The indices of the last compress(), which decompress_accumulate of the same step reads (the
    // payload carries none).
    std::vector<uint32_t> indices;
    bool sampled = false;
  };

  float scale(TensorId id) const {
    const TensorState& state = states_[static_cast<size_t>(id)];
    if (!unbiased_ || state.k == 0) return 1.0f;
    return static_cast<float>(static_cast<double>(numel(id)) / static_cast<double>(state.k));
  }

  // target[index_i] += scale * value_i over the indices of this rank's last compress().
  Status scatter(TensorId id, ConstBytes payload, std::span<float> target, float scale) const {
    const TensorState& state = states_[static_cast<size_t>(id)];
    if (payload.size() != max_compressed_bytes(id)) {
      return corrupt_payload(id, std::to_string(payload.size()) + " bytes; expected " +
                                     std::to_string(max_compressed_bytes(id)) +
                                     " (k = " + std::to_string(state.k) + " values)");
    }
    if (!state.sampled && state.k > 0) {
      return failed_precondition(spec() + ": tensor '" + tensor(id).name +
                                 "' is decoded before this rank compressed it (random-k reuses "
                                 "the indices of the rank's own compress() of the same step)");
    }
    const std::byte* p = payload.data();
    const uint32_t* indices = state.indices.data();
    const size_t k = state.indices.size();
    if (value_dtype_ == DType::kF32) {
      for (size_t i = 0; i < k; ++i) {
        float v;
        std::memcpy(&v, p + 4 * i, 4);
        target[indices[i]] += scale * v;
      }
    } else {
      for (size_t i = 0; i < k; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        target[indices[i]] +=
            scale * (value_dtype_ == DType::kF16 ? f16_to_f32(h) : bf16_to_f32(h));
      }
    }
    return Status::ok();
  }

  double density_;
  bool unbiased_;
  DType value_dtype_;
  std::vector<TensorState> states_;
};

Result<std::unique_ptr<Compressor>> make_randomk(const BuildRequest& request) {
  FRUGAL_ASSIGN_OR_RETURN(double density,
                          request.params.real("density", 0.01, 0.0, 1.0, /*min_exclusive=*/true));
  FRUGAL_ASSIGN_OR_RETURN(bool unbiased, request.params.boolean("unbiased", false));
  if (request.value_dtype != DType::kF32 && request.value_dtype != DType::kF16 &&
      request.value_dtype != DType::kBF16) {
    return invalid_argument("randomk sends values as f32, f16 or bf16");
  }
  return std::unique_ptr<Compressor>(
      new RandomKCompressor(request.context, density, unbiased, request.value_dtype));
}

}  // namespace

std::vector<CompressorEntry> randomk_compressor_entries() {
  return {
      {"randomk",
       "random-k with a shared seed: the same k = max(1, floor(density*n)) random indices on "
       "every rank, values summed by allreduce",
       {{"density", "0.01", "fraction of elements sent, 0 < density <= 1"},
        {"unbiased", "false",
         "true scales the values by n/k so the estimate is unbiased; false (for error "
         "feedback) sends them as they are"}},
       InnerSpec::kNone,
       {"randomk:density=0.01", "fp16(randomk:density=0.25,unbiased=true)",
        "ef(randomk:density=0.01)"},
       make_randomk,
       [](const ParamReader& params) {
         auto unbiased = params.boolean("unbiased", false);
         return loses_below_full_density(params) && unbiased.is_ok() && !unbiased.value();
       }},
  };
}

}  // namespace frugal
