// Deterministic random streams for compressors. A stream is a function of (job seed, step, tensor
// name, purpose) only, so every rank and every rerun draws the same numbers: random-k picks the
// same indices everywhere, and stochastic rounding is reproducible. Not thread-safe per object;
// make one stream per tensor and call.
#pragma once

#include <cstdint>
#include <random>
#include <string_view>

namespace frugal {

// Distinct purposes keep the streams of one tensor and step independent.
enum class RngPurpose : uint64_t {
  kRandomK = 1,
  kStochasticRounding = 2,
  kSampling = 3,
  kInitialization = 4,
};

uint64_t stream_seed(uint64_t job_seed, int64_t step, std::string_view tensor_name,
                     RngPurpose purpose);

class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}
  Rng(uint64_t job_seed, int64_t step, std::string_view tensor_name, RngPurpose purpose)
      : engine_(stream_seed(job_seed, step, tensor_name, purpose)) {}

  uint64_t next() { return engine_(); }
  // Uniform in [0, 1) with 24 random bits: exact in f32, and the same on every standard library
  // (std::uniform_real_distribution is implementation-defined).
  float uniform() { return static_cast<float>(engine_() >> 40) * 0x1.0p-24f; }
  // Uniform integer in [0, n), n > 0, without modulo bias (Lemire's multiply-shift).
  uint64_t below(uint64_t n);

 private:
  std::mt19937_64 engine_;
};

}  // namespace frugal
