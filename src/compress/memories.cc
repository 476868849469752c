// The memory family: decorators that keep what a compressor did not send and feed it back.
//   ef(inner)                 GRACE's residual memory (error_feedback.cc)
//   momentum(inner)           DGC's momentum correction with factor masking
//   (momentum_correction.cc) resireduce(ef(inner))     ResiReduce's shared group residuals and 2-D
//   sub-residuals
//                             (resireduce.cc)
// Memories send exactly what their inner compressor sends (cost model: the inner's); they cost
// memory instead: ef 4 bytes per element, momentum 8, resireduce less than ef (stats() reports
// residual_bytes and residual_bytes_saved). This file holds their shared kernels and spec checks.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "compress/memories_internal.h"

namespace frugal {
namespace memory_internal {
namespace {

inline uint32_t non_finite_bit(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  return (bits & 0x7F800000u) == 0x7F800000u ? 1u : 0u;
}

bool is_memory(const std::string& name) {
  return name == "ef" || name == "momentum" || name == "resireduce";
}

}  // namespace

// The kernels are memory bound; the clones let the same loops use AVX-512 or AVX2 where the
// machine has them (the build targets baseline x86-64). GCC's avx512f implies FMA, so the
// kernels that multiply turn contraction off: every clone computes bit-identical results.
__attribute__((target_clones("avx512f", "avx2", "default"))) bool add_and_check(
    float* __restrict dst, const float* __restrict src, size_t n) {
  uint32_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    const float sum = dst[i] + src[i];
    dst[i] = sum;
    bad |= non_finite_bit(sum);
  }
  return bad != 0;
}

__attribute__((target_clones("avx512f", "avx2", "default"), optimize("fp-contract=off"))) bool
momentum_and_check(float* __restrict u, float* __restrict v, const float* __restrict g,
                   float momentum, size_t n) {
  uint32_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    const float velocity = momentum * u[i] + g[i];
    u[i] = velocity;
    const float accumulated = v[i] + velocity;
    v[i] = accumulated;
    bad |= non_finite_bit(accumulated);
  }
  return bad != 0;
}

// A vector of 16 floats (GCC's vector extension): the clones lower it to one AVX-512, two AVX2 or
// four SSE registers with the same lane semantics, so sums over lanes have a fixed order. (No
// helper functions take or return it: that would change the ABI between clones.)
using Lanes = float __attribute__((vector_size(64)));
constexpr size_t kLanes = 16;

// Sums in 16 float lanes, flushed to double every block: vectorized, deterministic whatever the
// clone, and accurate on tensors of millions of elements.
__attribute__((target_clones("avx512f", "avx2", "default"), optimize("fp-contract=off"))) void
norms(const float* x, size_t n, double& l1, double& l2) {
  constexpr size_t kBlock = 4096;
  l1 = 0;
  l2 = 0;
  const size_t full = n / kLanes * kLanes;
  size_t i = 0;
  while (i < full) {
    const size_t end = i + std::min(kBlock, full - i);
    Lanes a1 = {};
    Lanes a2 = {};
    for (; i < end; i += kLanes) {
      Lanes v;
      std::memcpy(&v, x + i, sizeof(v));
      a1 += v < 0 ? -v : v;
      a2 += v * v;
    }
    for (size_t l = 0; l < kLanes; ++l) {
      l1 += a1[l];
      l2 += a2[l];
    }
  }
  for (; i < n; ++i) {
    l1 += std::fabs(x[i]);
    l2 += static_cast<double>(x[i]) * x[i];
  }
  l2 = std::sqrt(l2);
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void row_col_l1(
    const float* x, int64_t num_rows, int64_t num_cols, float* row_l1, float* col_l1) {
  const auto cols = static_cast<size_t>(num_cols);
  const size_t full = cols / kLanes * kLanes;
  std::fill(col_l1, col_l1 + cols, 0.0f);
  for (int64_t r = 0; r < num_rows; ++r) {
    const float* row = x + r * num_cols;
    Lanes lanes = {};
    size_t c = 0;
    for (; c < full; c += kLanes) {
      Lanes v;
      std::memcpy(&v, row + c, sizeof(v));
      const Lanes a = v < 0 ? -v : v;
      Lanes sum;
      std::memcpy(&sum, col_l1 + c, sizeof(sum));
      sum += a;
      std::memcpy(col_l1 + c, &sum, sizeof(sum));
      lanes += a;
    }
    float total = 0;
    for (size_t l = 0; l < kLanes; ++l) total += lanes[l];
    for (; c < cols; ++c) {
      const float a = std::fabs(row[c]);
      col_l1[c] += a;
      total += a;
    }
    row_l1[r] = total;
  }
}

std::string spec_text(const SpecNode& node) {
  std::string text = node.name;
  if (node.inner) text += "(" + spec_text(*node.inner) + ")";
  for (size_t i = 0; i < node.params.size(); ++i) {
    text += (i == 0 ? ":" : ",") + node.params[i].first + "=" + node.params[i].second;
  }
  return text;
}

Status reject_nested_memory(const std::string& written, const SpecNode& inner) {
  for (const SpecNode* node = &inner; node != nullptr; node = node->inner.get()) {
    if (is_memory(node->name)) {
      return invalid_argument(written + ": memories do not nest (" + node->name +
                              "(...) inside another memory); use one of ef(...), momentum(...) "
                              "or resireduce(ef(...)) around a compressor, e.g. "
                              "ef(topk:density=0.01)");
    }
  }
  return Status::ok();
}

Status check_error_feedback_inner(const std::string& outer, const Compressor& inner) {
  if (inner.aggregation() == Aggregation::kTwoPhase) {
    return invalid_argument(outer + " cannot wrap " + inner.spec() +
                            ": two-phase compressors (signsgd, ef-signsgd, onebit) keep their "
                            "own worker- and server-side error feedback; use them without a "
                            "memory");
  }
  if (inner.rounds() > 1) {
    return invalid_argument(outer + " cannot wrap " + inner.spec() + ": it takes " +
                            std::to_string(inner.rounds()) +
                            " allreduce rounds and keeps its own error feedback (PowerSGD); use "
                            "it without a memory");
  }
  return Status::ok();
}

}  // namespace memory_internal

std::vector<CompressorEntry> memory_compressor_entries() {
  return {memory_internal::ef_entry(), memory_internal::momentum_entry(),
          memory_internal::resireduce_entry()};
}

}  // namespace frugal
