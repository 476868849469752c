// Element-wise float kernels shared by the layers that average gradients.
#pragma once

#include <cstddef>

namespace frugal {

// data[i] = data[i] / divisor for i < count: the correctly rounded quotient, the same on every
// rank. A power-of-two divisor multiplies by its exact reciprocal instead, which gives the same
// bits several times faster (division is the slowest vector instruction). divisor == 1 is a no-op.
void divide_floats(float* data, size_t count, float divisor);

}  // namespace frugal
