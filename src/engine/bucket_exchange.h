// What exchanging one bucket costs, and the dense ring allreduce's cost model. Shared by the
// Synchronizer's dense path and the compressed exchange (compressed_exchange.h).
#pragma once

#include <cstdint>

namespace frugal {

// What one exchange adds to the step's counters.
struct ExchangeCounters {
  int64_t bytes_sent = 0;      // by this rank, per the collective's cost model
  int64_t bytes_received = 0;  // by this rank, per the collective's cost model
  int64_t decompress_us = 0;   // decoding (and two-phase reduction) time; 0 for dense
  int64_t comm_us = 0;         // time inside collectives
};

// 2(n-1)/n * bytes, rounded down: the bytes each rank sends (and receives) in a ring allreduce,
// the figure the counters report whatever algorithm the backend picks, so runs are comparable
// across backends.
int64_t ring_allreduce_bytes_per_rank(int64_t bytes, int world_size);

}  // namespace frugal
