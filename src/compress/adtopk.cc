// ADTopk (all-dimension top-k, HPDC'24): for a tensor [d0, d1, d2, ...] every slice along axis 1
// (fixed i0 and trailing indices) sends its k = max(1, floor(density * d1)) largest magnitudes, so
// no row or input channel goes missing. 1-D tensors are sent dense. Aggregation: gather.
//
// Fixed payload (interleave=false; S = numel / d1 slices, slice s = i0 * inner + j where
// inner = d2 * d3 * ..., j the flattened trailing index):
//   [S * k values (f32, f16 or bf16), slice by slice, each slice by ascending index]
//   [S * k indices along axis 1, same order: u16 when d1 < 65536, else u32]
// little-endian, unaligned. 1-D (and 0-D) tensors: [numel values].
// Cost model: S * k * (value bytes + index bytes) bytes through one allgather, no size exchange
// (2048x2048 f32 at density 0.01: 2048 * 20 * 6 = 240 KiB against 16 MiB dense).
//
// interleave=true (the reference code's policy, per tensor of rank >= 2): calls alternate between
// the all-dimension selection above (even calls are "traditional", odd calls all-dimension) and a
// traditional global-threshold path. The traditional path runs an exact global top-k of
// K = max(1, floor(density * numel)) for its first `warmup` steps and stores thr = the smallest
// selected magnitude; afterwards it sends every element with |x| > thr and recomputes thr exactly
// once `tau` traditional steps have passed since the last exact one. At each recomputation, with
// d = |thr_new - thr_old| and e = thr_old / 10: d < e/2 grows tau by 2, d < e by 1 (the layer is
// "stable"); d > 2e shrinks it by 2, otherwise by 1, never below min(5, initial tau). In the last
// quarter of training (StepInfo::total_steps known) stable tensors use all-dimension selection on
// every call. Payloads then start with a tag byte: 0 = the fixed payload above, 1 = the shared
// sparse format of sparse_payload.h (u32 global indices), 2 = all numel values (used when the
// sparse form would be larger). Cost model: 1 + the fixed size on all-dimension steps,
// 1 + 4 + c * (4 + value bytes) on traditional steps (c = K on exact steps, the number above thr
// otherwise), never above 1 + numel * value bytes; sizes vary, so fixed_size() is false.
//
// Deviations from the reference code, on purpose: the mask compares |x| (the reference compares
// the signed value), tau is per tensor (the reference shares one across layers), the tau update's
// unreachable branches are made reachable as above, and warm-up counts traditional steps.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "compress/adtopk_kernels.h"
#include "compress/bytes.h"
#include "compress/compressor_base.h"
#include "compress/registry.h"
#include "compress/sparse_payload.h"
#include "core/elementwise.h"
#include "core/thread_pool.h"

namespace frugal {
namespace {

using adtopk_detail::kMagnitudeMask;
using adtopk_detail::kNonFiniteMagnitude;

enum PayloadTag : uint8_t { kTagFixed = 0, kTagSparse = 1, kTagDense = 2 };

// Below this many elements a tensor is selected on the calling thread even with a pool.
constexpr int64_t kParallelMinElements = int64_t{1} << 20;

struct AdtopkOptions {
  double density = 0.01;
  bool interleave = false;
  int64_t warmup = 15;
  int64_t tau = 5;
  DType value_dtype = DType::kF32;
};

// What a tensor's shape fixes once, at registration.
struct Layout {
  bool dense = true;  // rank < 2: sent as all values
  int64_t numel = 0;
  int64_t d0 = 0;
  int64_t d1 = 0;
  int64_t inner = 1;  // product of the dims after axis 1
  int64_t k = 0;      // per slice
  int64_t slices = 0;
  size_t index_bytes = 2;
  size_t fixed_bytes = 0;  // the untagged fixed payload
  size_t dense_bytes = 0;
  int64_t global_k = 0;  // the traditional path's exact top-k
};

// The interleaving policy's per-tensor state (all of it is exported, so restarts are exact).
struct PolicyState {
  int64_t calls = 0;       // compress calls so far
  int64_t trad_steps = 0;  // traditional-path steps so far
  int64_t last_exact = 0;  // traditional step of the last exact selection
  int64_t tau = 0;         // current recomputation period, in traditional steps
  bool stable = false;     // the last recomputation moved thr by less than thr / 10
  bool has_threshold = false;
  float threshold = 0.0f;
  std::vector<uint32_t> selected;  // scratch for the exact path's indices
};
constexpr size_t kPolicyCounters = 6;

inline float bits_to_float(uint32_t bits) {
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}

inline void store_value(std::byte* p, uint32_t bits, DType dtype) {
  const float v = bits_to_float(bits);
  switch (dtype) {
    case DType::kF16:
      store(p, f32_to_f16(v));
      break;
    case DType::kBF16:
      store(p, f32_to_bf16(v));
      break;
    default:
      store(p, v);
  }
}

constexpr size_t value_width(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

template <DType V>
inline float load_value(const std::byte* p) {
  if constexpr (V == DType::kF16) {
    return f16_to_f32(load<uint16_t>(p));
  } else if constexpr (V == DType::kBF16) {
    return bf16_to_f32(load<uint16_t>(p));
  } else {
    return load<float>(p);
  }
}

// Writes `n` values of `dtype` and returns true iff one of them is Inf or NaN.
bool encode_dense(const uint32_t* bits, size_t n, DType dtype, std::byte* out) {
  uint32_t non_finite = 0;
  if (dtype == DType::kF32) {
    for (size_t i = 0; i < n; ++i) non_finite |= (bits[i] & kMagnitudeMask) >= kNonFiniteMagnitude;
    if (n > 0) std::memcpy(out, bits, n * 4);
  } else {
    for (size_t i = 0; i < n; ++i) {
      non_finite |= (bits[i] & kMagnitudeMask) >= kNonFiniteMagnitude;
      store_value(out + 2 * i, bits[i], dtype);
    }
  }
  return non_finite != 0;
}

// The same with every element of magnitude <= threshold_bits written as zero; true iff a kept
// value is Inf or NaN.
bool encode_dense_above(const uint32_t* bits, size_t n, uint32_t threshold_bits, DType dtype,
                        std::byte* out) {
  uint32_t non_finite = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t m = bits[i] & kMagnitudeMask;
    const uint32_t kept = m > threshold_bits ? bits[i] : 0u;
    non_finite |= (kept & kMagnitudeMask) >= kNonFiniteMagnitude;
    if (dtype == DType::kF32) {
      store(out + 4 * i, kept);
    } else {
      store_value(out + 2 * i, kept, dtype);
    }
  }
  return non_finite != 0;
}

class AdtopkCompressor final : public CompressorBase {
 public:
  AdtopkCompressor(const CompressorContext& context, const AdtopkOptions& options)
      : CompressorBase(context), options_(options) {}

  std::string spec() const override {
    std::string spec = "adtopk:density=" + format_param(options_.density) +
                       ",interleave=" + (options_.interleave ? "true" : "false") +
                       ",warmup=" + format_param(static_cast<double>(options_.warmup)) +
                       ",tau=" + format_param(static_cast<double>(options_.tau));
    if (options_.value_dtype == DType::kF16) return "fp16(" + spec + ")";
    if (options_.value_dtype == DType::kBF16) return "bf16(" + spec + ")";
    return spec;
  }
  Aggregation aggregation() const override { return Aggregation::kGather; }
  bool fixed_size() const override { return !options_.interleave; }

  size_t max_compressed_bytes(TensorId id) const override {
    const Layout& l = layouts_[static_cast<size_t>(id)];
    if (!options_.interleave) return l.fixed_bytes;
    return 1 + std::max(l.fixed_bytes, l.dense_bytes);
  }

  Result<size_t> compress(TensorId id, ConstView grad, MutableBytes out,
                          const StepInfo& step) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, grad, "gradient"));
    FRUGAL_CHECK(out.size() >= max_compressed_bytes(id), "output buffer too small");
    const Layout& l = layouts_[static_cast<size_t>(id)];
    const auto* bits = static_cast<const uint32_t*>(grad.data);
    if (!options_.interleave) {
      if (encode_fixed(id, bits, out.data())) return non_finite_error(id);
      return l.fixed_bytes;
    }
    PolicyState& state = states_[static_cast<size_t>(id)];
    const bool late = step.total_steps > 0 && 4 * step.step > 3 * step.total_steps;
    if (l.dense || state.calls % 2 == 1 || (late && state.stable)) {
      out[0] = std::byte{kTagFixed};
      if (encode_fixed(id, bits, out.data() + 1)) return non_finite_error(id);
      ++state.calls;
      return 1 + l.fixed_bytes;
    }
    const bool exact = !state.has_threshold || state.trad_steps < options_.warmup ||
                       state.trad_steps - state.last_exact >= state.tau;
    FRUGAL_ASSIGN_OR_RETURN(size_t used, exact ? encode_exact(id, l, bits, state, out)
                                               : encode_masked(id, l, bits, state, out));
    ++state.trad_steps;
    ++state.calls;
    return used;
  }

  Status decompress_accumulate(TensorId id, ConstBytes payload, MutableView accum) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, accum, "accumulator"));
    return accumulate(id, payload, accum.typed<float>(), 1.0f);
  }

  Status subtract_own_payload(TensorId id, ConstBytes payload, MutableView target) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, target, "target"));
    return accumulate(id, payload, target.typed<float>(), -1.0f);
  }

  // Fixed payloads touch k of every d1 elements of a row: zeroing, adding the n payloads and
  // dividing one row (axis 0) at a time, while it sits in cache, writes the target once where
  // the default's three passes (zero, scatter, divide) each stream it through memory.
  Status decompress_gathered(TensorId id, std::span<const ConstBytes> payloads, MutableView target,
                             float divisor) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, target, "target"));
    const Layout& l = layouts_[static_cast<size_t>(id)];
    if (options_.interleave || l.dense || l.slices == 0) {
      return Compressor::decompress_gathered(id, payloads, target, divisor);
    }
    for (const ConstBytes& payload : payloads) FRUGAL_RETURN_IF_ERROR(check_fixed(id, l, payload));
    return l.index_bytes == 2 ? gather_rows<uint16_t>(l, payloads, target.typed<float>(), divisor)
                              : gather_rows<uint32_t>(l, payloads, target.typed<float>(), divisor);
  }

  StateDict export_state() const override {
    StateDict state;
    if (!options_.interleave) return state;
    for (TensorId id = 0; id < num_tensors(); ++id) {
      if (layouts_[static_cast<size_t>(id)].dense) continue;
      const PolicyState& s = states_[static_cast<size_t>(id)];
      const int64_t counters[kPolicyCounters] = {
          s.calls, s.trad_steps, s.last_exact, s.tau, s.stable ? 1 : 0, s.has_threshold ? 1 : 0};
      StateTensor& entry = state[state_key(tensor(id).name, "adtopk.counters")];
      entry.dtype = DType::kI64;
      entry.shape = {static_cast<int64_t>(kPolicyCounters)};
      entry.data.resize(sizeof(counters));
      std::memcpy(entry.data.data(), counters, sizeof(counters));
      save_f32_state(state, state_key(tensor(id).name, "adtopk.threshold"), {1}, {s.threshold});
    }
    return state;
  }

  Status import_state(const StateDict& state) override {
    if (!options_.interleave) return Status::ok();
    // Validate everything first so a bad entry leaves the current state untouched.
    std::vector<PolicyState> imported(states_.size());
    for (TensorId id = 0; id < num_tensors(); ++id) {
      if (layouts_[static_cast<size_t>(id)].dense) continue;
      PolicyState& s = imported[static_cast<size_t>(id)];
      s.tau = options_.tau;
      const std::string key = state_key(tensor(id).name, "adtopk.counters");
      auto it = state.find(key);
      std::vector<float> threshold;
      FRUGAL_ASSIGN_OR_RETURN(
          bool has_threshold,
          load_f32_state(state, state_key(tensor(id).name, "adtopk.threshold"), {1}, threshold));
      if (it == state.end()) {
        if (has_threshold) return data_loss("saved compressor state lacks '" + key + "'");
        continue;  // no saved state: a fresh tensor
      }
      const StateTensor& entry = it->second;
      int64_t c[kPolicyCounters];
      if (entry.dtype != DType::kI64 || entry.shape != Shape{int64_t{kPolicyCounters}} ||
          entry.data.size() != sizeof(c) || !has_threshold) {
        return data_loss("saved compressor state '" + key + "' is " +
                         std::string(dtype_name(entry.dtype)) + " " + shape_to_string(entry.shape) +
                         "; expected i64 [" + std::to_string(kPolicyCounters) +
                         "] and a threshold");
      }
      std::memcpy(c, entry.data.data(), sizeof(c));
      const bool valid = c[0] >= 0 && c[1] >= 0 && c[2] >= 0 && c[2] <= c[1] && c[3] >= 1 &&
                         (c[4] == 0 || c[4] == 1) && (c[5] == 0 || c[5] == 1) &&
                         std::isfinite(threshold[0]) && threshold[0] >= 0.0f;
      if (!valid) return data_loss("saved compressor state '" + key + "' holds invalid values");
      s.calls = c[0];
      s.trad_steps = c[1];
      s.last_exact = c[2];
      s.tau = c[3];
      s.stable = c[4] == 1;
      s.has_threshold = c[5] == 1;
      s.threshold = threshold[0];
    }
    for (size_t i = 0; i < imported.size(); ++i) {
      imported[i].selected = std::move(states_[i].selected);
      states_[i] = std::move(imported[i]);
    }
    return Status::ok();
  }

 protected:
  Status on_register(TensorId id, const TensorInfo& info) override {
    Layout l;
    const int64_t n = shape_numel(info.shape);
    l.numel = n;
    const size_t value_bytes = dtype_size(options_.value_dtype);
    l.dense_bytes = static_cast<size_t>(n) * value_bytes;
    l.dense = info.shape.size() < 2;
    if (l.dense) {
      l.fixed_bytes = l.dense_bytes;
    } else {
      l.d0 = info.shape[0];
      l.d1 = info.shape[1];
      l.inner = 1;
      for (size_t i = 2; i < info.shape.size(); ++i) l.inner *= info.shape[i];
      if (l.d1 > int64_t{0xFFFFFFFF}) {
        return invalid_argument(spec() + ": tensor '" + info.name + "' " +
                                shape_to_string(info.shape) +
                                " has more than 2^32 - 1 elements along axis 1");
      }
      l.k =
          std::min(l.d1, std::max<int64_t>(1, static_cast<int64_t>(std::floor(
                                                  options_.density * static_cast<double>(l.d1)))));
      l.slices = l.d0 * l.inner;
      l.index_bytes = l.d1 < 65536 ? 2 : 4;
      l.fixed_bytes = static_cast<size_t>(l.slices * l.k) * (value_bytes + l.index_bytes);
      l.global_k = std::min(
          n, std::max<int64_t>(
                 1, static_cast<int64_t>(std::floor(options_.density * static_cast<double>(n)))));
      if (options_.interleave && n > int64_t{0xFFFFFFFF}) {
        return invalid_argument(spec() + ": tensor '" + info.name + "' " +
                                shape_to_string(info.shape) +
                                " has 2^32 or more elements; interleave=true sends u32 indices");
      }
    }
    FRUGAL_CHECK(static_cast<size_t>(id) == layouts_.size(), "tensor ids out of order");
    layouts_.push_back(l);
    row_hints_.emplace_back(l.dense ? 0 : static_cast<size_t>(l.d0), 0u);
    PolicyState s;
    s.tau = options_.tau;
    states_.push_back(std::move(s));
    return Status::ok();
  }

 private:
  // Writes the untagged fixed payload; returns true iff a selected value is Inf or NaN (a slice
  // holding one always selects one: non-finite magnitudes sort above every finite one).
  bool encode_fixed(TensorId id, const uint32_t* bits, std::byte* out) {
    const Layout& l = layouts_[static_cast<size_t>(id)];
    if (l.dense) return encode_dense(bits, static_cast<size_t>(l.numel), options_.value_dtype, out);
    if (l.slices == 0 || l.k == 0) return false;
    std::atomic<bool> non_finite{false};
    auto run = [&](size_t begin, size_t end) {
      if (encode_rows(l, bits, begin, end, row_hints_[static_cast<size_t>(id)].data(), out)) {
        non_finite.store(true, std::memory_order_relaxed);
      }
    };
    ThreadPool* pool = context().pool;
    const int64_t block = l.d1 * l.inner;
    if (pool != nullptr && l.d0 > 1 && l.d0 * block >= kParallelMinElements) {
      pool->parallel_for(
          static_cast<size_t>(l.d0),
          static_cast<size_t>(std::max<int64_t>(1, (kParallelMinElements / 4) / block)), run);
    } else {
      run(0, static_cast<size_t>(l.d0));
    }
    return non_finite.load();
  }

  // Selects and writes the slices of rows [begin, end) of axis 0. row_hints[i0] is row i0's k-th
  // magnitude at the previous step (0: none yet), the starting bound of slices longer than 8192
  // elements (shorter ones bound themselves; see select_top_magnitudes). Neighbouring rows can
  // differ in scale by 10x and more, which makes the previous row a poor guess. In mlp training
  // the same row's scale also moved enough between steps that 60% of the guesses missed and
  // were retried, which is why short slices no longer use them.
  bool encode_rows(const Layout& l, const uint32_t* bits, size_t begin, size_t end,
                   uint32_t* row_hints, std::byte* out) const {
    thread_local std::vector<uint32_t> selected;
    const auto d1 = static_cast<size_t>(l.d1);
    const auto inner = static_cast<size_t>(l.inner);
    const auto k = static_cast<size_t>(l.k);
    if (selected.size() < inner * k) selected.resize(inner * k);
    const DType dtype = options_.value_dtype;
    const size_t value_bytes = dtype_size(dtype);
    std::byte* values = out;
    std::byte* indices = out + static_cast<size_t>(l.slices) * k * value_bytes;
    uint32_t non_finite = 0;
    uint32_t previous_row = 0;  // without a hint of its own, a row starts from the previous one's
    for (size_t i0 = begin; i0 < end; ++i0) {
      const uint32_t* block = bits + i0 * d1 * inner;
      uint32_t hint = row_hints[i0] != 0 ? row_hints[i0] : previous_row;
      adtopk_detail::select_top_magnitudes_strided(block, d1, inner, k, selected.data(), &hint);
      row_hints[i0] = hint;
      previous_row = hint;
      const size_t first = i0 * inner * k;  // position of this row's first entry
      for (size_t j = 0; j < inner; ++j) {
        for (size_t c = 0; c < k; ++c) {
          const uint32_t index = selected[j * k + c];
          const uint32_t b = block[index * inner + j];
          const size_t position = first + j * k + c;
          non_finite |= (b & kMagnitudeMask) >= kNonFiniteMagnitude;
          if (dtype == DType::kF32) {
            store(values + 4 * position, b);
          } else {
            store_value(values + 2 * position, b, dtype);
          }
          if (l.index_bytes == 2) {
            store(indices + 2 * position, static_cast<uint16_t>(index));
          } else {
            store(indices + 4 * position, index);
          }
        }
      }
    }
    return non_finite != 0;
  }

  // The traditional path's exact global top-k; updates thr (and tau after warm-up).
  Result<size_t> encode_exact(TensorId id, const Layout& l, const uint32_t* bits,
                              PolicyState& state, MutableBytes out) {
    const auto n = static_cast<size_t>(numel(id));
    const auto k = static_cast<size_t>(l.global_k);
    state.selected.resize(k);
    // The previous thr seeds the selection's bound (exact either way; see the kernel).
    uint32_t hint = 0;
    if (state.has_threshold) std::memcpy(&hint, &state.threshold, 4);
    adtopk_detail::select_top_magnitudes(bits, n, k, state.selected.data(), &hint);
    uint32_t smallest = k == 0 ? 0 : kMagnitudeMask;  // an empty tensor keeps thr = 0
    uint32_t largest = 0;
    for (uint32_t index : state.selected) {
      smallest = std::min(smallest, bits[index] & kMagnitudeMask);
      largest = std::max(largest, bits[index] & kMagnitudeMask);
    }
    if (largest >= kNonFiniteMagnitude) return non_finite_error(id);
    size_t used;
    const DType dtype = options_.value_dtype;
    if (sparse_payload_bytes(static_cast<int64_t>(k), dtype) <= l.dense_bytes) {
      out[0] = std::byte{kTagSparse};
      used = 1 + encode_sparse({reinterpret_cast<const float*>(bits), n}, state.selected, dtype,
                               out.subspan(1));
    } else {
      // The selection as a dense array: zeros except at the selected entries.
      out[0] = std::byte{kTagDense};
      std::byte* values = out.data() + 1;
      if (l.dense_bytes > 0) std::memset(values, 0, l.dense_bytes);
      const size_t width = dtype_size(dtype);
      for (uint32_t index : state.selected) store_value(values + width * index, bits[index], dtype);
      used = 1 + l.dense_bytes;
    }
    const float threshold = bits_to_float(smallest);
    if (state.has_threshold && state.trad_steps >= options_.warmup) {
      const double change = std::fabs(static_cast<double>(threshold) - state.threshold);
      const double epsilon = static_cast<double>(state.threshold) / 10.0;
      const int64_t floor = std::min<int64_t>(5, options_.tau);
      if (change < epsilon / 2) {
        state.tau += 2;
        state.stable = true;
      } else if (change < epsilon) {
        state.tau += 1;
        state.stable = true;
      } else {
        state.tau = std::max(floor, state.tau - (change > 2 * epsilon ? 2 : 1));
        state.stable = false;
      }
    }
    state.threshold = threshold;
    state.has_threshold = true;
    state.last_exact = state.trad_steps;
    return used;
  }

  // The traditional path between recomputations: every element with |x| > thr.
  Result<size_t> encode_masked(TensorId id, const Layout& l, const uint32_t* bits,
                               const PolicyState& state, MutableBytes out) {
    const auto n = static_cast<size_t>(numel(id));
    uint32_t threshold_bits;
    std::memcpy(&threshold_bits, &state.threshold, 4);
    threshold_bits &= kMagnitudeMask;
    const size_t count = adtopk_detail::count_magnitudes_above(bits, n, threshold_bits);
    const DType dtype = options_.value_dtype;
    if (sparse_payload_bytes(static_cast<int64_t>(count), dtype) > l.dense_bytes) {
      out[0] = std::byte{kTagDense};
      if (encode_dense_above(bits, n, threshold_bits, dtype, out.data() + 1)) {
        return non_finite_error(id);
      }
      return 1 + l.dense_bytes;
    }
    std::byte* p = out.data();
    p[0] = std::byte{kTagSparse};
    store(p + 1, static_cast<uint32_t>(count));
    std::byte* indices = p + 5;
    bool non_finite = false;
    const size_t written =
        adtopk_detail::gather_indices_above(bits, n, threshold_bits, indices, &non_finite);
    if (non_finite) return non_finite_error(id);
    FRUGAL_CHECK(written == count, "threshold mask counted and gathered different elements");
    std::byte* values = indices + 4 * count;
    const size_t value_bytes = dtype_size(dtype);
    for (size_t i = 0; i < count; ++i) {
      store_value(values + value_bytes * i, bits[load<uint32_t>(indices + 4 * i)], dtype);
    }
    return 1 + sparse_payload_bytes(static_cast<int64_t>(count), dtype);
  }

  Status accumulate(TensorId id, ConstBytes payload, std::span<float> accum, float scale) {
    const Layout& l = layouts_[static_cast<size_t>(id)];
    if (!options_.interleave) return accumulate_fixed(id, l, payload, accum, scale);
    if (payload.empty()) return corrupt_payload(id, "empty; expected a tag byte");
    const auto tag = static_cast<uint8_t>(payload[0]);
    const ConstBytes body = payload.subspan(1);
    if (tag == kTagFixed) return accumulate_fixed(id, l, body, accum, scale);
    if (tag == kTagSparse && !l.dense) {
      auto parsed = parse_sparse(body, options_.value_dtype, numel(id));
      if (!parsed.is_ok()) return corrupt_payload(id, parsed.status().message());
      Status s = scatter_add_sparse(*parsed, accum, scale);
      return s.is_ok() ? s : corrupt_payload(id, s.message());
    }
    if (tag == kTagDense && !l.dense) {
      if (body.size() != l.dense_bytes) {
        return corrupt_payload(id, "dense body of " + std::to_string(body.size()) +
                                       " bytes; expected " + std::to_string(l.dense_bytes));
      }
      return dispatch_value([&]<DType V>() {
        constexpr size_t width = value_width(V);
        for (size_t i = 0; i < accum.size(); ++i) {
          accum[i] += scale * load_value<V>(body.data() + width * i);
        }
        return Status::ok();
      });
    }
    return corrupt_payload(id, "unknown tag " + std::to_string(tag) +
                                   (l.dense ? "; a 1-D tensor's payloads use tag 0"
                                            : "; valid tags are 0 (fixed), 1 (sparse), 2 (dense)"));
  }

  template <typename Fn>
  Status dispatch_value(Fn&& fn) const {
    switch (options_.value_dtype) {
      case DType::kF16:
        return fn.template operator()<DType::kF16>();
      case DType::kBF16:
        return fn.template operator()<DType::kBF16>();
      default:
        return fn.template operator()<DType::kF32>();
    }
  }

  Status accumulate_fixed(TensorId id, const Layout& l, ConstBytes payload, std::span<float> accum,
                          float scale) {
    // Checked whole before accum is touched, so a corrupt payload changes nothing.
    FRUGAL_RETURN_IF_ERROR(check_fixed(id, l, payload));
    return dispatch_value([&]<DType V>() {
      if (l.dense) {
        constexpr size_t width = value_width(V);
        for (size_t i = 0; i < accum.size(); ++i) {
          accum[i] += scale * load_value<V>(payload.data() + width * i);
        }
      } else if (l.index_bytes == 2) {
        scatter_rows<uint16_t, V>(l, payload, accum.data(), 0, static_cast<size_t>(l.d0), scale);
      } else {
        scatter_rows<uint32_t, V>(l, payload, accum.data(), 0, static_cast<size_t>(l.d0), scale);
      }
      return Status::ok();
    });
  }

  // A fixed payload's size, and (sparse layouts) every slice's indices: ascending and within
  // axis 1.
  Status check_fixed(TensorId id, const Layout& l, ConstBytes payload) const {
    if (payload.size() != l.fixed_bytes) {
      return corrupt_payload(id, std::to_string(payload.size()) + " bytes; expected " +
                                     std::to_string(l.fixed_bytes) + " for shape " +
                                     shape_to_string(tensor(id).shape));
    }
    if (l.dense) return Status::ok();
    return l.index_bytes == 2 ? check_indices<uint16_t>(id, l, payload)
                              : check_indices<uint32_t>(id, l, payload);
  }

  template <typename Index>
  Status check_indices(TensorId id, const Layout& l, ConstBytes payload) const {
    const auto k = static_cast<size_t>(l.k);
    const std::byte* indices =
        payload.data() + static_cast<size_t>(l.slices) * k * dtype_size(options_.value_dtype);
    for (size_t s = 0; s < static_cast<size_t>(l.slices); ++s) {
      int64_t previous = -1;
      for (size_t c = 0; c < k; ++c) {
        const int64_t index = load<Index>(indices + sizeof(Index) * (s * k + c));
        if (index >= l.d1 || index <= previous) {
          return corrupt_payload(
              id, "slice " + std::to_string(s) + " entry " + std::to_string(c) + " has index " +
                      std::to_string(index) +
                      (index >= l.d1 ? " beyond axis 1 of size " + std::to_string(l.d1)
                                     : " not above the previous " + std::to_string(previous)));
        }
        previous = index;
      }
    }
    return Status::ok();
  }

  // Adds scale x the entries of rows [begin, end) (axis 0) of a checked fixed payload to those
  // rows, which start at `rows` (row `begin` of the accumulator).
  template <typename Index, DType V>
  void scatter_rows(const Layout& l, ConstBytes payload, float* rows, size_t begin, size_t end,
                    float scale) const {
    const auto k = static_cast<size_t>(l.k);
    const auto inner = static_cast<size_t>(l.inner);
    const auto d1 = static_cast<size_t>(l.d1);
    const std::byte* values = payload.data();
    const std::byte* indices = values + static_cast<size_t>(l.slices) * k * value_width(V);
    for (size_t s = begin * inner; s < end * inner; ++s) {
      // Slice s = i0 * inner + j starts at i0 * d1 * inner + j and strides by inner.
      float* base = rows + (s / inner - begin) * d1 * inner + s % inner;
      for (size_t c = 0; c < k; ++c) {
        const size_t position = s * k + c;
        const size_t index = load<Index>(indices + sizeof(Index) * position);
        base[index * inner] += scale * load_value<V>(values + value_width(V) * position);
      }
    }
  }

  // decompress_gathered's pass: per row of axis 0, zero it, add every rank's entries in rank
  // order, divide it. A large target's rows are built in a cached scratch row and streamed out
  // (divide_floats_streaming), so the target is written once and never read.
  template <typename Index>
  Status gather_rows(const Layout& l, std::span<const ConstBytes> payloads, std::span<float> target,
                     float divisor) {
    const size_t row = static_cast<size_t>(l.d1 * l.inner);
    const bool stream = target.size_bytes() >= kStreamingResultBytes && row <= kMaxScratchFloats;
    std::vector<float> scratch(stream ? row : 0);
    return dispatch_value([&]<DType V>() {
      for (size_t i0 = 0; i0 < static_cast<size_t>(l.d0); ++i0) {
        float* out = target.data() + i0 * row;
        float* work = stream ? scratch.data() : out;
        std::fill(work, work + row, 0.0f);
        for (const ConstBytes& payload : payloads) {
          scatter_rows<Index, V>(l, payload, work, i0, i0 + 1, 1.0f);
        }
        if (stream) {
          divide_floats_streaming(out, work, row, divisor);
        } else {
          divide_floats(out, row, divisor);
        }
      }
      return Status::ok();
    });
  }

  // A scratch row must stay cached from its zeroing to its streaming out; longer rows (over
  // 64 KiB) are built in place.
  static constexpr size_t kMaxScratchFloats = 16384;

  AdtopkOptions options_;
  std::vector<Layout> layouts_;
  std::vector<PolicyState> states_;
  // Per tensor, per row of axis 0: the last selection's k-th magnitude bits (see encode_rows).
  // Only a starting guess of an exact selection, so never exported with the state.
  std::vector<std::vector<uint32_t>> row_hints_;
};

Result<std::unique_ptr<Compressor>> make_adtopk(const BuildRequest& request) {
  AdtopkOptions options;
  FRUGAL_ASSIGN_OR_RETURN(options.density,
                          request.params.real("density", 0.01, 0.0, 1.0, /*min_exclusive=*/true));
  FRUGAL_ASSIGN_OR_RETURN(options.interleave, request.params.boolean("interleave", false));
  FRUGAL_ASSIGN_OR_RETURN(options.warmup, request.params.integer("warmup", 15, 0, 1000000000));
  FRUGAL_ASSIGN_OR_RETURN(options.tau, request.params.integer("tau", 5, 1, 1000000000));
  if (request.value_dtype != DType::kF32 && request.value_dtype != DType::kF16 &&
      request.value_dtype != DType::kBF16) {
    return invalid_argument("adtopk sends values as f32, f16 or bf16");
  }
  options.value_dtype = request.value_dtype;
  return std::unique_ptr<Compressor>(new AdtopkCompressor(request.context, options));
}

}  // namespace

std::vector<CompressorEntry> adtopk_compressor_entries() {
  return {
      {"adtopk",
       "all-dimension top-k (ADTopk): the k = max(1, floor(density * dim1)) largest magnitudes "
       "along axis 1 of every slice; fixed-size payload; 1-D tensors dense",
       {
           {"density", "0.01", "fraction of axis 1 kept per slice, 0 < density <= 1"},
           {"interleave", "false",
            "alternate with a global-threshold top-k per tensor (the paper's code), true|false"},
           {"warmup", "15", "interleave: exact traditional steps before thr is reused, >= 0"},
           {"tau", "5", "interleave: initial traditional steps between thr recomputations, >= 1"},
       },
       InnerSpec::kNone,
       {"ef(adtopk:density=0.01)", "fp16(adtopk:density=0.01)",
        "adtopk:density=0.05,interleave=true,warmup=1,tau=2"},
       make_adtopk,
       loses_below_full_density},
  };
}

}  // namespace frugal
