// The reference exchange protocol for each Aggregation, run serially over one Compressor per
// rank: exactly what the engine does with collectives, without communication. Test support for
// compress/ and the engine's own tests. Not thread-safe.
#pragma once

#include <span>
#include <vector>

#include "compress/compressor.h"

namespace frugal::testing {

struct SerialExchange {
  // The averaged gradient each rank ends up with (identical on every rank when the protocol is
  // deterministic).
  std::vector<std::vector<float>> averaged;
  // The bytes each rank sent in its first payload.
  std::vector<size_t> payload_bytes;
};

// Runs one exchange of tensor `id` with ranks[r] compressing grads[r]. The compressors must have
// the same tensors registered and a context whose world_size is ranks.size().
Result<SerialExchange> serial_exchange(std::span<Compressor* const> ranks, TensorId id,
                                       const std::vector<std::vector<float>>& grads,
                                       const StepInfo& step);

}  // namespace frugal::testing
