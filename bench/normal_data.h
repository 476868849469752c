// Benchmark data: standard normal floats from a seed, identical on every machine and run.
// Gradients are roughly Gaussian, which matters to the threshold estimators (DGC's sample,
// gaussiank, sidco), and a continuous distribution keeps top-k free of ties. Thread-safe.
#pragma once

#include <cstdint>
#include <span>

namespace frugal::bench {

// Fills `data` with standard normal values: splitmix64 + Box-Muller (hand-written rather than
// <random> so that the values do not depend on the standard library's distributions).
void fill_normal(std::span<float> data, uint64_t seed);

}  // namespace frugal::bench
