// GoogleTest helpers shared by the compress/ tests: building a compressor from a spec and
// reading back its exported state. Header-only; thread-safe.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "compress/registry.h"

namespace frugal::testing {

// Unwraps a made compressor, failing the current test (and returning nullptr) on an error.
inline std::unique_ptr<Compressor> expect_made(Result<std::unique_ptr<Compressor>> made,
                                               std::string_view spec) {
  EXPECT_TRUE(made.is_ok()) << spec << ": " << made.status().to_string();
  return made.is_ok() ? std::move(made).value() : nullptr;
}

// Builds `spec` through the registry with the given seed and world size.
inline std::unique_ptr<Compressor> make_or_fail(std::string_view spec, uint64_t seed = 0,
                                                int world_size = 1) {
  CompressorContext context;
  context.seed = seed;
  context.world_size = world_size;
  return expect_made(make_compressor(spec, context), spec);
}

// The f32 values exported under `key` ({} if the state has no such key).
inline std::vector<float> exported_floats(const Compressor& c, const std::string& key) {
  StateDict state = c.export_state();
  auto it = state.find(key);
  if (it == state.end()) return {};
  std::vector<float> values(it->second.data.size() / 4);
  if (!values.empty()) std::memcpy(values.data(), it->second.data.data(), it->second.data.size());
  return values;
}

}  // namespace frugal::testing
