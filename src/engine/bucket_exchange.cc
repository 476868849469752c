#include "engine/bucket_exchange.h"

namespace frugal {

int64_t ring_allreduce_bytes_per_rank(int64_t bytes, int world_size) {
  if (world_size <= 1) return 0;
  return 2 * (world_size - 1) * bytes / world_size;
}

}  // namespace frugal
