// Element-wise float kernels shared by the layers that average gradients.
#pragma once

#include <cstddef>

namespace frugal {

// data[i] = data[i] / divisor for i < count: the correctly rounded quotient, the same on every
// rank. A power-of-two divisor multiplies by its exact reciprocal instead, which gives the same
// bits several times faster (division is the slowest vector instruction). divisor == 1 is a no-op.
void divide_floats(float* data, size_t count, float divisor);

// dst[i] = src[i] / divisor for i < count, rounded as divide_floats, written with non-temporal
// (streaming) stores: the lines of dst go straight to memory, without being read first (an
// ordinary store reads each line before overwriting it) and without evicting what the caches
// hold. For a large result that is read much later, such as a decoded gradient that the
// optimizer reads after every bucket is in. Ends with a store fence, so the result is visible to
// another thread once it synchronizes with this one. dst and src must not overlap. Plain stores
// where the CPU has no streaming stores.
void divide_floats_streaming(float* dst, const float* src, size_t count, float divisor);

// Decoders stream results of at least this many bytes (divide_floats_streaming) and write
// smaller ones in place: twice a core's 2 MiB L2 here, so an in-place result would not stay
// cached until the optimizer reads it anyway.
inline constexpr size_t kStreamingResultBytes = size_t{4} << 20;

}  // namespace frugal
