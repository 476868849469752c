// Test support for the memory decorators: small test-only inner compressors (a brute-force top-k
// in the shared sparse format, stubs for two-phase and multi-round compressors) and a builder
// that resolves them inside registry specs, so the memory tests depend on no other family.
// Not thread-safe beyond what compressor.h promises.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "compress/compressor_base.h"
#include "compress/registry.h"
#include "compress/sparse_payload.h"
#include "compress/testing/test_data.h"

namespace frugal::memory_testing {

// "brutek:count=K": the K largest magnitudes (ties to the lower index) by a full sort, in the
// sparse payload format with f32 values (f16 under fp16(...)).
class BruteTopK final : public CompressorBase {
 public:
  BruteTopK(int64_t count, DType value_dtype)
      : CompressorBase({}), count_(count), value_dtype_(value_dtype) {}

  std::string spec() const override {
    const std::string s = "brutek:count=" + std::to_string(count_);
    return value_dtype_ == DType::kF32 ? s : "fp16(" + s + ")";
  }
  Aggregation aggregation() const override { return Aggregation::kGather; }
  std::optional<DType> sparse_value_dtype() const override { return value_dtype_; }
  bool fixed_size() const override { return true; }
  size_t max_compressed_bytes(TensorId id) const override {
    return sparse_payload_bytes(kept(id), value_dtype_);
  }

  Result<size_t> compress(TensorId id, ConstView grad, MutableBytes out,
                          const StepInfo& /*step*/) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, grad, "gradient"));
    auto values = grad.typed<float>();
    for (float v : values) {
      if (!std::isfinite(v)) return non_finite_error(id);
    }
    std::vector<uint32_t> order(values.size());
    std::iota(order.begin(), order.end(), 0u);
    std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
      const float x = std::fabs(values[a]);
      const float y = std::fabs(values[b]);
      return x > y || (x == y && a < b);
    });
    order.resize(static_cast<size_t>(kept(id)));
    std::sort(order.begin(), order.end());
    return encode_sparse(values, order, value_dtype_, out);
  }

  Status decompress_accumulate(TensorId id, ConstBytes payload, MutableView accum) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, accum, "accumulator"));
    auto parsed = parse_sparse(payload, value_dtype_, numel(id));
    if (!parsed.is_ok()) return corrupt_payload(id, parsed.status().message());
    Status s = scatter_add_sparse(parsed.value(), accum.typed<float>());
    return s.is_ok() ? s : corrupt_payload(id, s.message());
  }

  Status subtract_own_payload(TensorId id, ConstBytes payload, MutableView target) override {
    auto parsed = parse_sparse(payload, value_dtype_, numel(id));
    if (!parsed.is_ok()) return corrupt_payload(id, parsed.status().message());
    return scatter_add_sparse(parsed.value(), target.typed<float>(), -1.0f);
  }

 private:
  int64_t kept(TensorId id) const { return std::min(count_, numel(id)); }
  int64_t count_;
  DType value_dtype_;
};

// "stub:kind=two-phase" or "stub:rounds=2": only what the memory factories look at.
class StubCompressor final : public CompressorBase {
 public:
  StubCompressor(Aggregation aggregation, int rounds)
      : CompressorBase({}), aggregation_(aggregation), rounds_(rounds) {}
  std::string spec() const override { return "stub"; }
  Aggregation aggregation() const override { return aggregation_; }
  int rounds() const override { return rounds_; }
  bool fixed_size() const override { return true; }
  size_t max_compressed_bytes(TensorId) const override { return 0; }
  Result<size_t> compress(TensorId, ConstView, MutableBytes, const StepInfo&) override {
    return size_t{0};
  }
  Status decompress_accumulate(TensorId, ConstBytes, MutableView) override { return Status::ok(); }

 private:
  Aggregation aggregation_;
  int rounds_;
};

inline Result<std::unique_ptr<Compressor>> build_node(const SpecNode& node, DType value_dtype,
                                                      const CompressorContext& context) {
  ParamReader params(node.name, node.params);
  if (node.name == "brutek") {
    FRUGAL_ASSIGN_OR_RETURN(int64_t count, params.integer("count", 1, 0, int64_t{1} << 40));
    return std::unique_ptr<Compressor>(new BruteTopK(count, value_dtype));
  }
  if (node.name == "stub") {
    FRUGAL_ASSIGN_OR_RETURN(int64_t rounds, params.integer("rounds", 1, 1, 4));
    FRUGAL_ASSIGN_OR_RETURN(std::string kind, params.choice("kind", "sum", {"sum", "two-phase"}));
    return std::unique_ptr<Compressor>(new StubCompressor(
        kind == "sum" ? Aggregation::kSum : Aggregation::kTwoPhase, static_cast<int>(rounds)));
  }
  const auto& registry = compressor_registry();
  auto it = std::find_if(registry.begin(), registry.end(),
                         [&](const CompressorEntry& e) { return e.name == node.name; });
  if (it == registry.end()) return invalid_argument("unknown compressor " + node.name);
  BuildRequest request{node, params, context, value_dtype,
                       [&context](const SpecNode& inner, DType inner_dtype) {
                         return build_node(inner, inner_dtype, context);
                       }};
  return it->factory(request);
}

// Builds `spec` with the registry's factories, resolving brutek and stub to the test compressors.
inline Result<std::unique_ptr<Compressor>> make_test_compressor(std::string_view spec,
                                                                CompressorContext context = {}) {
  FRUGAL_ASSIGN_OR_RETURN(SpecNode node, parse_spec(spec));
  return build_node(node, DType::kF32, context);
}

using frugal::testing::gaussian;

// Expects `spec` to be rejected as InvalidArgument with `message_part` in the message.
inline void expect_rejected(std::string_view spec, std::string_view message_part) {
  auto made = make_test_compressor(spec);
  ASSERT_FALSE(made.is_ok()) << spec << " was accepted";
  EXPECT_EQ(made.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(made.status().message().find(message_part), std::string::npos)
      << spec << ": " << made.status().message();
}

// Compresses and returns the payload (empty on error, with a test failure reported by caller).
inline Result<std::vector<std::byte>> compress_once(Compressor& c, TensorId id,
                                                    const std::vector<float>& grad, int64_t step) {
  std::vector<std::byte> out(c.max_compressed_bytes(id));
  FRUGAL_ASSIGN_OR_RETURN(
      size_t used, c.compress(id, {grad.data(), DType::kF32, c.tensor(id).shape}, out, {step, 0}));
  out.resize(used);
  return out;
}

// What `payload` decodes to, alone.
inline std::vector<float> decode(Compressor& c, TensorId id,
                                 const std::vector<std::byte>& payload) {
  std::vector<float> dense(static_cast<size_t>(shape_numel(c.tensor(id).shape)), 0.0f);
  Status s = c.decompress_accumulate(id, payload, {dense.data(), DType::kF32, c.tensor(id).shape});
  FRUGAL_CHECK(s.is_ok(), s.to_string());
  return dense;
}

// The f32 state entry `key` of `state` (empty when absent).
inline std::vector<float> f32_entry(const StateDict& state, const std::string& key) {
  auto it = state.find(key);
  if (it == state.end()) return {};
  std::vector<float> values(it->second.data.size() / 4);
  if (!values.empty()) std::memcpy(values.data(), it->second.data.data(), it->second.data.size());
  return values;
}

inline std::vector<int32_t> i32_entry(const StateDict& state, const std::string& key) {
  auto it = state.find(key);
  if (it == state.end()) return {};
  std::vector<int32_t> values(it->second.data.size() / 4);
  if (!values.empty()) std::memcpy(values.data(), it->second.data.data(), it->second.data.size());
  return values;
}

}  // namespace frugal::memory_testing
